"""The allocation layer's in-kernel half: the ceiling is the kernel's, and threads start.

The supervisor keeps the kernel's soft ``RLIMIT_DATA`` at what it has mapped plus what
the limit leaves plus a small margin (supervisor/ceiling.py), so an allocation that
cannot fit fails at once. Here, in the kernel: every process the kernel starts gets
the user's own limit back, a limit the user sets is noted, and threads keep starting
however tight the ceiling is. Standard library only, like the rest of the agent.

Threads need room outside the ceiling: ``RLIMIT_DATA`` counts a thread's whole stack
(8 MiB, of which a few KiB are ever touched), and a margin of a few MiB lets only a
thread or two start, where a thread pool starts 2 x CPU count at once and libgomp
aborts the process when it cannot. Measured here (2 cores, a ceiling 1 MiB above what
the process has mapped): 4 of 12 threads started, the 4 stacks glibc keeps by default
in its cache of freed stacks; with the cache made larger and filled at the kernel's
start, 12 of 12, native threads included. So:

* the supervisor raises glibc's stack cache (``glibc.pthread.stack_cache_size``, read
  once at exec) by ``stack_cache_threads()`` stacks, and the agent fills it as it
  loads by starting and ending that many threads: their stacks stay mapped (already
  under the ceiling) and the next threads take them, whoever starts them;
* a Python thread's start whose stack would not fit under the ceiling lifts it to the
  user's limit and leaves it there; the supervisor puts its ceiling back, now counting
  the new stack, once no start is under way (a count in the state mapping, kept
  around every start) and it has seen the lift for LIFT_HOLD (0.1 s) since.
  A new thread that finds no room for its first frames dies before it says it runs,
  and ``Thread.start`` waits for it forever: with the lift undone after a fixed
  0.1 s, 2 of 2 runs of 200 threads at 91 % hung here under load (181 and 121 of
  200 started); a ceiling computed from a sample's mappings read before the newest
  stacks did the same without any lift.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .protocol import ENV_DATA_LIMIT


def data_limit() -> int | None:
    """The kernel's soft RLIMIT_DATA now (None where there is none to read)."""
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_DATA)[0]
    except (ImportError, OSError, ValueError):
        return None


# -- RLIMIT_DATA: the ceiling is the kernel's, never its children's ------------------
#
# The supervisor's ceiling (supervisor/ceiling.py) is the kernel's soft RLIMIT_DATA,
# which a child inherits when it is cloned. Every child must start with the user's
# limit instead: ``agent.data_limit``, the kernel's before the ceiling (the supervisor
# passes it in KERNEL_DOCTOR_DATA_LIMIT), then whatever the user sets in the kernel
# with ``resource.setrlimit``/``prlimit`` (wrapped below, so it is known at once).
#
# A fork runs Python's at-fork hooks (os.fork, multiprocessing's fork, pty.fork, and
# subprocess with preexec_fn), and one resets the limit in the child. Exec'd children
# mostly run none: subprocess's fork_exec (vfork since 3.10 unless preexec_fn),
# os.posix_spawn and os.system (glibc's posix_spawn), and through them
# multiprocessing's spawn and forkserver. How to give those the user's limit was
# measured (2 cores, a 2 GiB ceiling, children that reserve 40 GiB MAP_NORESERVE as
# they start; reservations that worked):
# - the supervisor noticing new children in its process-tree walk and prlimit-ing
#   them: polled every 2 / 20 / 1000 ms, 74 / 6 / 0 of 200 for a small C program
#   (51 / 4 / 0 static, both cores busy); Python children, slower to start, 40 / 40 /
#   1–2 of 40. Its real walk runs every 10th sample: 0.2–0.5 s in a cell, 10 s idle.
# - the agent prlimit-ing the child by its pid as soon as fork_exec returns: 200 of
#   200 idle, but 147 of 200 for the static program with both cores busy (the parent
#   is descheduled after the vfork); and os.system gives no pid at all.
# - the agent lifting the kernel's ceiling to the user's limit around the spawn and
#   putting it back right after: 200 of 200 in every case, as the child is cloned
#   with the lift. The kernel was without its ceiling for a median 55–130 µs (at most
#   ~1 ms) per subprocess.run; a lift and its undoing cost 2.6 µs.
# The last is what is done. While lifted, another thread's allocation is not refused
# (the threshold layer still watches); os.system stays lifted through the command
# until the supervisor, which leaves a value at the user's limit alone for one sample
# only (it may be a lift), puts its ceiling back. A lock orders lifts, their undoing
# and the user's own settings; spawns that overlap share a lift. Not covered: a C
# library that forks and execs or calls system() itself, and a limit lowered below
# the ceiling by other means than Python's resource module (the agent lifts to the
# last limit it knows).


def _set_data_limit(limits: tuple[int, int]) -> None:
    """Set RLIMIT_DATA past the wrapper below, which takes what it sets for the user's."""
    import resource

    setrlimit = getattr(resource.setrlimit, _WRAPPED, resource.setrlimit)
    setrlimit(resource.RLIMIT_DATA, limits)


def _num(value: int) -> int:
    """A limit as a number to compare (Python has RLIM_INFINITY as -1)."""
    return 1 << 64 if value == -1 else value


# What a new thread maps beyond its stack as it starts (its frames' first chunk,
# malloc's arena): a lift is needed only where stack and this would not fit.
THREAD_SLACK = 2 * 1024**2


def mapped() -> int | None:
    """This process's private writable mappings (what RLIMIT_DATA counts), or None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[5]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _DataLimits:
    """The kernel's side of the ceiling: lifted to the user's limit around spawns."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent  # agent.data_limit: the user's soft limit
        self.pid = os.getpid()
        self.lock = threading.RLock()  # a signal handler in the main thread may spawn
        self.spawning = 0
        self.lifted: tuple[int, int] | None = None  # (the ceiling, the lift) to undo

    def target(self, hard: int) -> int:
        """The user's soft limit, within the hard one."""
        bound: int = self.agent.data_limit
        return hard if _num(bound) > _num(hard) else bound

    def lift(self) -> None:
        import resource

        with self.lock:
            self.spawning += 1
            try:
                soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
                if _num(soft) > _num(self.agent.data_limit):
                    # Raised past the limit we know, which no ceiling is: the user's
                    # own, set by other means than the resource module.
                    self.agent.data_limit = soft
                    return
                target = self.target(hard)
                if _num(soft) < _num(target):
                    _set_data_limit((target, hard))
                    self.lifted = (soft, target)  # the newest ceiling, for overlaps
            except (OSError, ValueError):
                pass

    def starting(self, delta: int) -> None:
        """A thread start begins (+1) or ends (-1): the supervisor leaves the ceiling
        alone meanwhile, so the new thread's stack and first frames get the room its
        start was given."""
        with self.lock:
            try:
                self.agent._state.add_thread_starts(delta)
            except (AttributeError, ValueError):
                pass  # the agent unloaded (its mapping closed)

    def lift_for_thread(self) -> bool:
        """Lift to the user's limit where a new stack would not fit under the ceiling,
        and leave it: the supervisor puts its ceiling back (True: lifted)."""
        import resource

        with self.lock:
            try:
                soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
                target = self.target(hard)
                if _num(soft) >= _num(target):
                    return False  # no ceiling in force (or lifted already)
                now = mapped()  # unknown: lift
                if now is not None and now + thread_stack_size() + THREAD_SLACK <= soft:
                    return False  # a new stack fits under the ceiling: no lift needed
                _set_data_limit((target, hard))
                self.lifted = None  # a spawn under way must not undo it
                return True
            except (OSError, ValueError):
                return False

    def drop(self) -> None:
        import resource

        with self.lock:
            self.spawning -= 1
            if self.spawning > 0 or self.lifted is None:
                return
            ceiling, target = self.lifted
            self.lifted = None
            try:
                soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
                if soft == target:  # not moved meanwhile (by the supervisor, the user)
                    _set_data_limit((ceiling, hard))
            except (OSError, ValueError):
                pass

    def user_sets(self, call: Any, args: tuple[Any, ...]) -> Any:
        """The user's own ``resource.setrlimit``/``prlimit`` of RLIMIT_DATA: their
        soft limit is the new bound, and a spawn under way must not undo it."""
        import resource

        with self.lock:
            result = call(*args)
            self.agent.data_limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
            self.lifted = None
        return result

    def in_child(self) -> None:
        """After a fork (the child's at-fork hook): the user's limit, not the ceiling."""
        import resource

        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
            target = self.target(hard)
            if _num(soft) < _num(target):
                _set_data_limit((target, hard))
        except (OSError, ValueError):
            pass


_limits: _DataLimits | None = None  # this kernel's, once installed
# What starts a process without Python's at-fork hooks, and what sets a limit.
_SPAWNERS = (
    ("_posixsubprocess", "fork_exec"),  # multiprocessing's spawn and forkserver
    ("subprocess", "_fork_exec"),  # subprocess's own name for it (3.11+)
    ("os", "posix_spawn"),
    ("os", "posix_spawnp"),
    ("os", "system"),
)
_SETTERS = (("resource", "setrlimit"), ("resource", "prlimit"))
_WRAPPED = "_kernel_doctor_wraps"


def _ours() -> _DataLimits | None:
    limits = _limits
    return limits if limits is not None and os.getpid() == limits.pid else None


def _spawner(real: Any) -> Any:
    def spawn(*args: Any, **kwargs: Any) -> Any:
        limits = _ours()
        if limits is None:  # not the kernel (a forked child has the user's limit)
            return real(*args, **kwargs)
        limits.lift()
        try:
            return real(*args, **kwargs)
        finally:
            limits.drop()

    return spawn


def _setter(real: Any) -> Any:
    """``resource.setrlimit(resource, limits)`` or ``prlimit(pid, resource, limits)``."""
    with_pid = real.__name__ == "prlimit"

    def set_limit(*args: Any) -> Any:
        import resource

        limits = _ours()
        if limits is not None and len(args) == (3 if with_pid else 2):
            ours = not with_pid or args[0] in (0, limits.pid)
            if ours and args[-2] == resource.RLIMIT_DATA:
                return limits.user_sets(real, args)
        return real(*args)

    return set_limit


def _after_fork_in_child() -> None:
    limits = _limits
    if limits is not None and os.getpid() != limits.pid:
        limits.in_child()


def keep_children_limit(agent: Any) -> None:
    """Set ``agent.data_limit`` (the user's RLIMIT_DATA) and make every process the
    kernel starts get it instead of the supervisor's ceiling."""
    global _limits
    fill_stack_cache()  # before the thread starters below are wrapped: no lifts for it
    given = os.environ.get(ENV_DATA_LIMIT, "")
    # The supervisor may have set its ceiling already; it says what was there before.
    agent.data_limit = int(given) if given.lstrip("-").isdigit() else data_limit()
    if agent.data_limit is None:
        return
    if _limits is None:
        os.register_at_fork(after_in_child=_after_fork_in_child)
    _limits = _DataLimits(agent)
    import importlib

    wrappers = ((_spawner, _SPAWNERS), (_setter, _SETTERS), (_thread_starter, _THREAD_STARTERS))
    for wrap, names in wrappers:
        for module_name, name in names:
            try:
                owner: Any = importlib.import_module(module_name)
            except ImportError:
                continue
            *path, name = name.split(".")  # "Thread.start": a method of a class
            for part in path:
                owner = getattr(owner, part)
            real = getattr(owner, name, None)
            if real is None or hasattr(real, _WRAPPED):
                continue  # absent here, or wrapped by an agent loaded before
            wrapper = wrap(real)
            for attribute in ("__name__", "__qualname__", "__doc__"):
                setattr(wrapper, attribute, getattr(real, attribute, None))
            setattr(wrapper, _WRAPPED, real)
            setattr(owner, name, wrapper)


# -- Threads: a stack cache filled at start, and a lift beyond it ---------------------

TUNABLES = "GLIBC_TUNABLES"
STACK_CACHE_TUNABLE = "glibc.pthread.stack_cache_size"
GLIBC_STACK_CACHE = 40 * 1024**2  # glibc's own default, kept on top of ours
DEFAULT_STACK = 8 * 1024**2  # glibc's thread stack when RLIMIT_STACK is unlimited


def thread_stack_size() -> int:
    """The stack a new thread gets by default: glibc takes RLIMIT_STACK's soft limit."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return soft if 0 < soft != resource.RLIM_INFINITY and soft < 2**31 else DEFAULT_STACK


def stack_cache_threads() -> int:
    """Stacks kept ready: a thread pool of 2 x CPU count at once, plus a few."""
    return 2 * (os.cpu_count() or 1) + 8


def with_stack_cache(tunables: str | None) -> str:
    """``GLIBC_TUNABLES`` for the kernel: the user's own, then our stack cache (last,
    so that ``without_stack_cache`` can take exactly it back out)."""
    size = stack_cache_threads() * thread_stack_size() + GLIBC_STACK_CACHE
    ours = f"{STACK_CACHE_TUNABLE}={size}"
    return f"{tunables}:{ours}" if tunables else ours


def without_stack_cache(tunables: str) -> str | None:
    """The user's ``GLIBC_TUNABLES`` again (None: they had none), or the value as it
    is when its last entry is not ours."""
    head, _, last = tunables.rpartition(":")
    if not last.startswith(STACK_CACHE_TUNABLE + "="):
        return tunables
    return head or None


def fill_stack_cache() -> int:
    """Start and end ``stack_cache_threads()`` threads at once when the supervisor
    made glibc's cache hold them; the number started. The environment goes back to
    the user's, so the kernel's children see what they would see without us."""
    tunables = os.environ.get(TUNABLES)
    if tunables is None:
        return 0
    users = without_stack_cache(tunables)
    if users == tunables:
        return 0  # not raised by our supervisor: the cache would keep only a few
    if users is None:
        del os.environ[TUNABLES]
    else:
        os.environ[TUNABLES] = users
    release = threading.Event()
    started = []
    try:
        for _ in range(stack_cache_threads()):
            thread = threading.Thread(target=release.wait, name="kernel-doctor-stack")
            thread.start()
            started.append(thread)
    except RuntimeError:
        pass  # the threads that started are enough to help
    finally:
        release.set()
        for thread in started:
            thread.join()
    return len(started)


def _thread_starter(real: Any) -> Any:
    """``Thread.start`` (which returns once the new thread runs), and ``_thread``'s
    starters for threads started without ``threading``."""

    def start(*args: Any, **kwargs: Any) -> Any:
        limits = _ours()
        if limits is None:
            return real(*args, **kwargs)
        limits.starting(1)  # before the look below: the ceiling must not move after it
        try:
            limits.lift_for_thread()
            return real(*args, **kwargs)
        finally:
            limits.starting(-1)

    return start


def start_unlifted(thread: threading.Thread) -> None:
    """Start one of the agent's own threads without lifting the ceiling: its stack
    comes from the cache filled at start, and a lift would leave the kernel without
    its ceiling for the first cells."""
    start = threading.Thread.start
    getattr(start, _WRAPPED, start)(thread)


_THREAD_STARTERS = (
    # Around the whole start, which returns once the new thread runs: its first
    # allocations (its frames' memory, malloc's arena) come under the lift too.
    ("threading", "Thread.start"),
    ("_thread", "start_new_thread"),  # threads started without threading
    ("_thread", "start_joinable_thread"),
)
