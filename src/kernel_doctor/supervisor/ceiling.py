"""The memory guard's allocation layer: an allocation that cannot fit fails at once.

The kernel's ``RLIMIT_DATA`` (soft) is kept at what it has mapped now plus what the
limit leaves plus a small margin, so ``np.zeros`` of 20 GiB in an 8 GiB container raises
``MemoryError`` in the cell instead of starting an OOM death.

Why ``RLIMIT_DATA`` (measured, MACHINE-FACTS.md): it counts private writable mappings
whether touched or not, but not PROT_NONE reservations, so PyTorch's and JAX's
address-space reservations are free until committed; a refused ``mmap``/``brk`` is a
``MemoryError`` (NumPy, bytes, dict resizes) or PyTorch's RuntimeError in the cell.

The ceiling leaves exactly what the limit leaves, counting active file cache as room
(reclaim gives it back; inactive file cache is not counted at all). Any margin above
that lets through exactly the single allocations that kill: with the earlier 1 GiB
reserve (room for 128 thread stacks), one array of 20 % of a 2 GiB limit at 85 %
passed and the OOM killer ended the kernel as NumPy filled it; with a 10 MiB margin,
a 512 MiB kernel still died of arrays 6 and 9 MiB larger than the room left
(benchmarks/GUARD.md). Thread stacks, which ``RLIMIT_DATA`` counts in full, come from
glibc's stack cache that the agent fills as it starts, or lift the ceiling
(agent/ceiling.py). Where that cache cannot be had (a C library other than glibc
2.34+), a reserve of 128 stacks stays above the room, and with it the gap.
The ceiling follows the kernel at every sample, so it never stays below what memory
the kernel could really get.

The ceiling is the kernel's alone, and never above the user's own limit:

* The user's limit (``Ceiling.bound``) is the kernel's at its start, then whatever the
  user sets in the kernel (``resource.setrlimit`` in a cell): every update reads the
  limit back first, and a value that is not one of our ceilings is the user's. A lower
  soft or any new hard limit becomes the bound at once; a value at or above the bound
  does only when it is still there a sample later, because the agent lifts the ceiling
  to the bound for the microseconds of a spawn (below). The write itself returns the
  value it replaced (``prlimit`` reads and sets under one lock in the kernel), so a
  limit set between our read and our write is never lost: it is taken as the bound,
  or handed back if it was the agent's lift. (Our ceiling was above it for those
  microseconds; a hard limit lowered meanwhile makes the write fail, as we may not
  raise it, and it is retried from what is there.) A value the user sets that equals
  one of our last few ceilings is taken for ours; no user picks those numbers.
* The kernel's children must start with the user's limit, not the ceiling (a child's
  40 GiB ``MAP_NORESERVE`` reservation must work as in a plain kernel). Forked
  children reset it in an ``os.register_at_fork`` hook; processes it execs without
  Python's fork hooks (``subprocess``, ``os.system``, ``os.posix_spawn``,
  ``multiprocessing``'s spawn) get it from the agent's lift around the spawn: see
  ``kernel_doctor.agent.guard``, which says why, with the measurements.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Callable

from ..agent.ceiling import thread_stack_size
from ..probe.files import Reader
from ..probe.procfs import statm_sizes

# Thread stacks the reserve leaves room for where glibc's stack cache is not ours.
RESERVED_STACKS = 128
# A new ceiling is set only when it moved this much: one prlimit call, not one a sample.
STEP = 1024**2
# How long a value at the user's limit is left alone before it counts as theirs, once
# no thread start is under way: the agent's lift for a spawn, or for a thread started
# without ``threading`` (whose start returns before the thread runs).
LIFT_HOLD = 0.1
# A thread start takes microseconds to milliseconds; a count still above zero after this
# long is a start that will not end (the agent unloaded meanwhile, its count left
# behind), and the ceiling moves again rather than staying where it was for good.
START_HOLD_MAX = 5.0
# Ceilings set lately, still recognised as ours when read back: the agent puts the one
# it lifted back after a spawn, which may be older than the last we set.
KEPT = 8

Limits = tuple[int, int]  # (soft, hard), as resource.prlimit has them


def stack_cache_works() -> bool:
    """glibc 2.34+, whose stack cache size is a tunable (the kernel runs on the same C
    library as its supervisor, as the kernelspec starts it on the same machine)."""
    try:
        name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
        major, minor = (int(part) for part in version.split(".")[:2])
    except (AttributeError, OSError, ValueError):
        return False
    return name == "glibc" and (major, minor) >= (2, 34)


def reserve() -> int:
    """What the ceiling leaves above what the limit leaves: nothing where threads take
    their stacks from the cache the agent fills."""
    return 0 if stack_cache_works() else RESERVED_STACKS * thread_stack_size()


def _num(value: int) -> int:
    """A limit as a number to compare (Python has RLIM_INFINITY as -1)."""
    return 1 << 64 if value == resource.RLIM_INFINITY else value


def _none() -> int:
    return 0  # no agent to count thread starts (yet)


class Ceiling:
    """The kernel process's RLIMIT_DATA, moved with the kernel; restored on release."""

    def __init__(self, pid: int, limit_bytes: int) -> None:
        self.pid = pid
        self.limit_bytes = limit_bytes
        self.reserve = reserve()
        self.original: Limits = resource.prlimit(pid, resource.RLIMIT_DATA)
        # The user's limit, which the ceiling never exceeds: the kernel's own at its
        # start, then whatever the user sets in it.
        self.bound: Limits = self.original
        self.current: int | None = None  # the soft limit set last; None while released
        self.error: str | None = None
        self._ours: deque[int] = deque(maxlen=KEPT)  # ceilings set lately, below the bound
        self._raised: int | None = None  # a value at or above the bound, seen once
        self._raised_at = 0.0  # when it was first seen
        self.hold: int | None = None  # the most it may be while a stopped cell unwinds
        # Thread starts under way in the kernel (the agent's count, in its state record).
        self.starts: Callable[[], int] = _none
        self._starting_since = 0.0  # when a count above zero was first seen
        self._statm = Reader(f"/proc/{pid}/statm")

    def update(self, data_bytes: int, counted: int) -> None:
        """``data_bytes``: the kernel's private writable mappings at this sample
        (statm's data); ``counted``: what the limit counts now that reclaim cannot give
        back (the whole cgroup's, less its file cache)."""
        if self.error is not None:
            return
        if self.starts():
            # A thread is starting under what its start saw: a new thread that finds no
            # room for its first frames dies before it says it runs, and Thread.start
            # waits for it forever. A lift seen now is timed from the start's end.
            now = time.monotonic()
            self._starting_since = self._starting_since or now
            if now - self._starting_since < START_HOLD_MAX:
                self._raised = None
                return
        else:
            self._starting_since = 0.0
        seen = self._read()
        if seen is None or not self._settle(seen):
            return
        room = max(0, self.limit_bytes - counted)
        ceiling = self._ceiling(data_bytes, room)
        if seen[0] == self.current and abs(ceiling - self.current) < STEP:
            return
        lower = _num(ceiling) < _num(seen[0])
        if lower:
            # From the mappings now where they grew since the sample: new threads'
            # stacks mapped meanwhile would be left out, and the ceiling put below what
            # the kernel has mapped.
            ceiling = self._ceiling(max(data_bytes, self._data_now() or 0), room)
        self._set(ceiling, seen)
        if lower and self.current is not None and not self._starting_since and self.starts():
            # A start began between the look above and the write: give it back what it
            # saw (the next sample decides again), unless it has lifted since.
            old = self._write(seen)
            if old is not None and old[0] != self.current:
                self._write(old)

    def _ceiling(self, data_bytes: int, room: int) -> int:
        ceiling = data_bytes + room + self.reserve
        if self.hold is not None:
            ceiling = min(ceiling, self.hold)
        return self._clamp(ceiling)

    def _data_now(self) -> int | None:
        sizes = statm_sizes(self._statm.read())
        return sizes[1] if sizes else None

    def release(self) -> None:
        """Give the kernel the user's limit back, unless the user has set one since."""
        if self.current is None:
            return
        seen = self._read()
        if seen is None:
            return
        ours = self._is_ours(seen[0])
        self.current = None
        if not ours:
            return  # the user's limit (or the agent's lift to it) is already there
        old = self._write(self.bound)
        if old is not None and old != seen and not self._is_ours(old[0]):
            self._write(old)  # the user set theirs between our read and our write

    def _is_ours(self, soft: int) -> bool:
        return soft == self.current or soft in self._ours

    def _settle(self, seen: Limits) -> bool:
        """Take a limit the user set as the new bound; False to leave the kernel's
        limit alone this once (it may be the agent's lift for a spawn)."""
        soft, hard = seen
        bound_soft, bound_hard = self.bound
        if hard != bound_hard:
            # The ceiling is a soft limit and the agent lifts only the soft one: a new
            # hard limit is the user's (lowered; raised only where they may).
            bound_hard = hard
            if _num(bound_soft) > _num(hard):
                bound_soft = hard
            self.bound = (bound_soft, bound_hard)
        if self._is_ours(soft):
            self._raised = None
            return True
        if self.current is None or _num(soft) < _num(bound_soft):
            # Lowered by the user (a lower limit is never wrong to keep), or anything
            # there before our first ceiling.
            self.bound = (soft, bound_hard)
            self._raised = None
            return True
        # At or above the bound: the agent's lift while the kernel starts a process or
        # a thread, or the user's own. Left alone for LIFT_HOLD, so the spawn's child
        # starts with it and a new thread runs its first lines under it; still there
        # after that, it is the user's (or a lift the agent left for us to undo).
        now = time.monotonic()
        if self._raised != soft:
            self._raised, self._raised_at = soft, now
            return False
        if now - self._raised_at < LIFT_HOLD:
            return False
        self._raised = None
        self.bound = (soft, bound_hard)
        return True

    def _clamp(self, ceiling: int) -> int:
        for bound in self.bound:  # never above what the user or the system set
            if bound != resource.RLIM_INFINITY:
                ceiling = min(ceiling, bound)
        return ceiling

    def _set(self, ceiling: int, seen: Limits) -> None:
        for _ in range(2):  # once more if the user set a limit meanwhile
            limits = (self._clamp(ceiling), self.bound[1])
            try:
                old = resource.prlimit(self.pid, resource.RLIMIT_DATA, limits)
            except (OSError, ValueError) as exc:
                # The user lowered the hard limit since we read it: only a privileged
                # supervisor may raise it again (and must not). From what is there now.
                now = self._read()
                if now is None or now[1] == self.bound[1]:
                    self._off(exc)
                    return
                self._settle(now)
                seen = now
                continue
            self.current = limits[0]
            if _num(limits[0]) < _num(self.bound[0]):  # the bound is the user's, not ours
                self._ours.append(limits[0])
            if old == seen:
                return
            # Set between our read and our write (microseconds): the user's limit, or
            # the agent's lift for a spawn or a thread, whose child must not get the
            # ceiling. A lift goes back at once, whatever was seen before: the ceiling
            # was computed from mappings read before it, and a thread started under it
            # has mapped its stack since (a ceiling below its mappings refused the next
            # thread's first allocations, and ``Thread.start`` waited for it forever).
            # The next sample decides from fresh numbers.
            if old[1] == self.bound[1] and _num(old[0]) >= _num(self.bound[0]):
                self._write(old)
                return
            bound = self.bound
            if not self._settle(old):
                self._write(old)
                return
            if self.bound == bound:
                return  # one of ours
            seen = limits

    def _read(self) -> Limits | None:
        try:
            return resource.prlimit(self.pid, resource.RLIMIT_DATA)
        except (OSError, ValueError) as exc:
            self._off(exc)
            return None

    def _write(self, limits: Limits) -> Limits | None:
        """Set the kernel's limits; the ones they replaced (None when it failed)."""
        try:
            return resource.prlimit(self.pid, resource.RLIMIT_DATA, limits)
        except (OSError, ValueError) as exc:
            self._off(exc)
            return None

    def _off(self, exc: Exception) -> None:
        # The kernel is gone, or we may not change its limits: the threshold layer
        # still works, and this one stays off.
        self.error = str(exc)
        self.current = None
