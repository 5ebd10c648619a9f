"""What watches the running kernel, set up once it has started: the memory source and
its limit, the session's meta record, the sampler with the memory guard, cgroup usage
events and the control channel (``kernel-doctor where``, interrupts)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..probe import procfs
from .spawn import connection_file

if TYPE_CHECKING:
    from ..probe.base import MemorySource, Watch
    from .control import Control
    from .guard import Guard
    from .sampler import Sampler
    from .session import Session


@dataclass(frozen=True)
class Watched:
    """The kernel being watched, and how the supervisor was asked to watch it."""

    pid: int
    argv: list[str]
    options: dict[str, str]
    session: Session
    agent: bool
    dump_signal: int | None
    started_epoch: float  # time.time() at the kernel's start
    started: float  # time.monotonic() at the kernel's start
    watch_fd: int | None = None  # wakes the agent's watcher thread (spawn.Kernel)


@dataclass
class Monitor:
    """Filled in the order ``start`` makes its parts, so that what was made before a
    failure half way still goes to the diagnosis."""

    source: MemorySource
    sampler: Sampler | None = None
    events: Watch | None = None  # cgroup usage notifications at the marks
    control: Control | None = None

    @classmethod
    def find(cls, pid: int) -> Monitor:
        from ..probe.limits import find_memory_source

        return cls(find_memory_source(pid))

    def start(self, kernel: Watched) -> None:
        from ..agent.protocol import LimitRecord, Meta
        from ..probe.system import address_space_limits
        from .control import Control
        from .recovery import recover_stale_sessions
        from .sampler import MARKS, Sampler

        source = self.source
        session = kernel.session
        oom_before = source.oom_kills()
        guard = _guard(kernel, source) if kernel.agent else None
        limit = source.limit
        session.write_meta(
            Meta(
                supervisor_pid=os.getpid(),
                supervisor_start=procfs.start_time(os.getpid()),
                kernel_pid=kernel.pid,
                started=kernel.started_epoch,
                host=os.uname().nodename,
                kernel_argv=tuple(kernel.argv),
                connection_file=connection_file(kernel.argv),
                kernel_name=kernel.options.get("kernel-name"),
                session_name=os.environ.get("JPY_SESSION_NAME") or None,
                agent=kernel.agent,
                limit=LimitRecord(limit.limit_bytes, limit.kind, limit.source, limit.path),
                oom_kills_before=oom_before,
                # The cgroup's high-water mark covers its whole life, earlier kernels'
                # included: it says something about this kernel only if it rises.
                peak_before=source.peak(),
                rlimits=address_space_limits(),
                guard=guard.describe() if guard is not None else None,
            )
        )
        if session.write_error is not None:
            sys.stderr.write(
                f"kernel-doctor: warning: cannot write evidence ({why(session.write_error)})"
                "; a death's diagnosis will be less precise\n"
            )
        sampler = Sampler(source, session, kernel.pid, kernel.started, kernel.dump_signal)
        self.sampler = sampler
        sampler.guard = guard
        sampler.watch_fd = kernel.watch_fd
        marks = [int(source.limit.limit_bytes * m) for m in MARKS]
        if guard is not None and guard.enabled:
            marks.append(guard.wake_mark())
        # KERNEL_DOCTOR_EVENTS=0 samples without cgroup notifications: what cgroup v2
        # offers for usage marks, so benchmarks can measure that case on v1 too.
        events = os.environ.get("KERNEL_DOCTOR_EVENTS") != "0"
        self.events = source.watch(marks) if events and source.limit.kind != "system" else None
        self.control = Control(session.directory, kernel.pid, kernel.dump_signal, kernel.watch_fd)
        sampler.sample()
        if "session" not in kernel.options:  # a caller's own session dir is not ours to scan
            recover_stale_sessions(os.path.dirname(session.directory), session.directory)
        if kernel.agent:
            from ..reports.notice import leave_notice

            leave_notice(session.directory, session.meta)


def _guard(kernel: Watched, source: MemorySource) -> Guard:
    from .guard import ENV_GUARD, make_guard

    setting = kernel.options.get("guard") or os.environ.get(ENV_GUARD)
    if setting:
        from ..agent.settings import GUARD_DEFAULT, guard_setting

        try:
            guard_setting(setting)
        except ValueError as exc:  # the guard stays, at its default
            sys.stderr.write(f"kernel-doctor: warning: {exc}; using {GUARD_DEFAULT}\n")
    return make_guard(setting, source.limit, kernel.session.directory, kernel.pid)


def why(exc: OSError) -> str:
    return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)
