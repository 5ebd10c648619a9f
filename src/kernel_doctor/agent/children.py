"""A worker of the kernel died: tell the running cell at once, and end a wait that
can never end.

The supervisor sees the kernel's children go and tells why (``supervisor/children.py``):
it appends a ``ChildDeath`` to the session's ``children.jsonl`` and sends the child
signal. The handler here runs in the main thread, where cells run: it writes one note
to the cell's stderr (what died, of what, how memory stood, what to do) and, when the
cell waits in ``multiprocessing.Pool`` for results a dead worker took with it (it
would wait forever: bpo-22393), raises ``KernelDoctorWorkerDied`` there, so the cell
ends and the kernel keeps its variables. ``KERNEL_DOCTOR_BREAK_POOL=0`` keeps the
wait. A death while no cell runs is shown by the next cell.

Standard library only, like the rest of the agent.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any

from .private import append_private, read_private

CHILDREN = "children.jsonl"
ROLES = "children-roles.jsonl"  # the agent's word on what each one was (``role``)
ENV_BREAK_POOL = "KERNEL_DOCTOR_BREAK_POOL"
# Signals that mean a crash, not an end someone asked for (SIGTERM is how
# Pool.terminate() and ``with Pool()`` end their workers).
CRASH_SIGNALS = frozenset(
    int(s) for s in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT)
)
POOL_FILE = os.path.join("multiprocessing", "pool.py")
# A cell that ends on a broken pool waits this long at most for the supervisor to say
# which worker died of what (it looks at once when poked: ~20 ms here).
CHILD_WAIT = 0.5


def child_signal() -> int:
    """The signal that tells the agent a child of the kernel died (SIGRTMIN+9)."""
    return int(signal.SIGRTMIN) + 9


@dataclass(frozen=True)
class ChildDeath:
    """One child of the kernel that did not end as processes end."""

    pid: int
    name: str  # its command name (/proc/PID/comm)
    cause: str  # "out_of_memory" | "native_crash"
    signal: str | None  # "SIGKILL", "SIGSEGV"…
    rss_bytes: int  # what it held when last seen
    tree_bytes: int  # what the kernel and all its children held then
    limit_bytes: int
    limit_source: str
    limit_kind: str  # "cgroup" | "system" | …
    others: int  # children of the kernel still alive
    t: float
    counted_bytes: int | None = None  # what the limit counted
    seq: int | None = None  # the cell running at the time
    argv: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: object) -> ChildDeath | None:
        if not isinstance(obj, dict):
            return None
        try:
            death = cls(**{k: obj[k] for k in cls.__dataclass_fields__ if k in obj})
        except TypeError:
            return None
        # Checked as read: the values are JSON's, whatever the annotations say.
        ints: tuple[object, ...] = (death.pid, death.rss_bytes, death.tree_bytes, death.others)
        texts: tuple[object, ...] = (death.cause, death.name, death.limit_source)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            return None
        return death if all(isinstance(v, str) for v in texts) else None


def write_child_death(session_dir: str, death: ChildDeath) -> None:
    fd = append_private(os.path.join(session_dir, CHILDREN))
    try:
        os.write(fd, json.dumps(death.to_json(), separators=(",", ":")).encode() + b"\n")
    finally:
        os.close(fd)


def read_child_deaths(session_dir: str, offset: int = 0) -> tuple[list[ChildDeath], int]:
    """The deaths recorded after byte ``offset``, and the offset after the last one."""
    data = read_private(os.path.join(session_dir, CHILDREN), limit=1 << 24) or b""
    end = data.rfind(b"\n") + 1
    deaths = []
    for line in data[offset:end].splitlines():
        try:
            death = ChildDeath.from_json(json.loads(line))
        except ValueError:
            death = None
        if death is not None:
            deaths.append(death)
    return deaths, max(offset, end)


def write_role(session_dir: str, pid: int, what: str) -> None:
    fd = append_private(os.path.join(session_dir, ROLES))
    try:
        os.write(fd, json.dumps({"pid": pid, "role": what}).encode() + b"\n")
    finally:
        os.close(fd)


def read_roles(session_dir: str) -> dict[int, str]:
    """What the agent said each dead child was, by pid."""
    roles = {}
    for line in (read_private(os.path.join(session_dir, ROLES)) or b"").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
            continue
        if isinstance(record.get("role"), str):
            roles[record["pid"]] = record["role"]
    return roles


def broken_by(error: BaseException | None) -> str | None:
    """What broke, as the user knows it, if ``error`` says a worker died:
    BrokenProcessPool, DataLoader's "DataLoader worker (pid 4242) is killed by signal:
    Killed", or a CalledProcessError of a subprocess killed by a signal."""
    if error is None:
        return None
    name = type(error).__name__
    if name in ("BrokenProcessPool", "BrokenExecutor"):
        return "a ProcessPoolExecutor worker"
    if name == "RuntimeError":
        try:
            text = str(error)
        except Exception:  # a user's exception whose __str__ raises
            return None
        return "a DataLoader worker" if "DataLoader worker" in text else None
    if name == "CalledProcessError" and (getattr(error, "returncode", 0) or 0) < 0:
        return "a subprocess of this cell"  # killed by a signal: which, and why?
    return None


def await_child_death(agent: Any, role: str) -> None:
    """The cell ends on a pool that broke because a worker died: ask the supervisor to
    look now, and give it a moment, so that the note saying which worker died of what
    is the cell's (the handler writes it while we sleep here)."""
    known = len(agent.child_deaths)
    agent.child_hint = role
    try:
        agent._poke(b"k")
        deadline = time.monotonic() + CHILD_WAIT
        while len(agent.child_deaths) == known and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        agent.child_hint = None


def _size(num: float | None) -> str:
    from .guard import format_bytes

    return format_bytes(num)


def role(death: ChildDeath, frame: FrameType | None, hint: str | None = None) -> str:
    """What the child was, as the user knows it: from what the cell waits in (or the
    error it ended with: ``hint``), else from its command line."""
    waiting = {hint} if hint else set()
    while frame is not None:
        name = frame.f_code.co_filename
        if name.endswith(POOL_FILE):
            waiting.add("a multiprocessing Pool worker")
        elif name.endswith(os.path.join("concurrent", "futures", "process.py")):
            waiting.add("a ProcessPoolExecutor worker")
        elif "torch" in name and "dataloader" in name:
            waiting.add("a DataLoader worker")
        elif name.endswith("subprocess.py"):
            waiting.add("a subprocess of this cell")
        frame = frame.f_back
    argv = " ".join(death.argv)
    if "loky" in argv:
        return "a joblib/loky worker"
    if len(waiting) == 1:
        return waiting.pop()
    if "multiprocessing" in argv:
        return "a multiprocessing worker"
    if "ipykernel" in argv:
        return "a process forked from the kernel"
    return f"a subprocess of this cell: {death.name}" if death.name else "a child of the kernel"


def note(death: ChildDeath, what: str) -> str:
    """The one paragraph the cell shows."""
    held = _size(death.rss_bytes)
    if death.cause == "out_of_memory":
        others = death.others
        company = "the kernel and this worker"
        if others:
            company = f"the kernel and its {others + 1} workers"
        # The OOM killer acts when the limit is reached; the last look was up to a
        # sampling interval before, when the worker may have been smaller.
        reached = f"had reached the {_size(death.limit_bytes)} memory limit"
        if death.limit_kind == "system":
            reached = f"had used up the machine's {_size(death.limit_bytes)}"
        head = (
            f"kernel-doctor: worker process {death.pid} ({what}) was killed by the OOM "
            f"killer: {company} {reached} (the worker held {held} when last seen)."
        )
        advice = (
            "Use fewer workers (processes=…, num_workers=…), give each a smaller chunk "
            "(chunksize=…), recycle them (maxtasksperchild=…), or share big inputs "
            "(multiprocessing.shared_memory, numpy memmap) instead of copying them into "
            "every worker."
        )
    else:
        sig = death.signal or "a crash signal"
        who = f"worker process {death.pid} ({what})" if death.pid else what
        size = f"; it held {held}" if death.rss_bytes else ""
        head = f"kernel-doctor: {who} crashed with {sig} (a native crash, in C code it ran{size})."
        advice = (
            "Run the same call in the kernel itself with a small input to see the line; "
            "a native library's crash is often a version mismatch."
        )
    return f"{head}\n  → {advice}\n"


class KernelDoctorWorkerDied(ChildProcessError):
    """Raised in a cell that waits for a pool whose worker died: it would wait forever."""

    def __getattr__(self, name: str) -> Any:
        # As KernelDoctorMemoryError does: the traceback IPython shows ends in the
        # user's own call (pool.map), not in the pool's and threading's waits under it
        # nor in the handler that raised it.
        if name != "_render_traceback_":
            raise AttributeError(name)
        from .guard import _raised_by_handler, _without_handler

        if not _raised_by_handler(self, __file__):
            raise AttributeError(name)
        return lambda: _without_handler(self, _internal_frames(self))


def _internal_frames(error: BaseException) -> int:
    """How many innermost frames are the handler's, the pool's and threading's."""
    internal = (__file__, POOL_FILE, "threading.py")
    files = []
    tb = error.__traceback__
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    count = 0
    for file in reversed(files):
        if not file.endswith(internal):
            break
        count += 1
    return count


def _waits_on_pool(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.endswith(POOL_FILE):
            return True
        frame = frame.f_back
    return False


def install(agent: Any) -> None:
    """The child signal's handler; the supervisor checks SigCgt before it signals."""
    breaks = os.environ.get(ENV_BREAK_POOL, "1").strip().lower() not in ("0", "no", "off")

    def handler(signum: int, frame: FrameType | None) -> None:
        deaths, agent.children_offset = read_child_deaths(agent.session_dir, agent.children_offset)
        cell = agent._cell
        if not deaths:
            return
        for death in deaths:
            # The cell may have ended on the broken pool already (torch's DataLoader
            # raises from its SIGCHLD handler): the exception being handled says what.
            hint = agent.child_hint or broken_by(sys.exc_info()[1])
            what = role(death, frame, hint)
            text = note(death, what)
            agent.child_deaths.append(death)
            try:
                write_role(agent.session_dir, death.pid, what)
            except OSError:
                pass  # the note matters more than the record
            if cell is None:
                agent.later_notes.append(text)  # shown by the next cell
                continue
            sys.stderr.write(text)
        if cell is None:
            return
        sys.stderr.flush()
        if breaks and _waits_on_pool(frame):
            last = deaths[-1]
            raise KernelDoctorWorkerDied(
                f"worker process {last.pid} of this Pool died "
                f"({'killed by the OOM killer' if last.cause == 'out_of_memory' else last.signal}) "
                "with the task it was running: the pool would have waited for its result "
                "forever, so kernel-doctor stopped the wait. The kernel and its variables "
                "are intact; the pool has replaced the worker."
            )

    signal.signal(child_signal(), handler)
