"""Looking inside a busy kernel: ``kernel-doctor where``, and interrupts it ignores.

``where`` writes ``where NONCE`` into the session's ``control`` FIFO. The supervisor
then takes two looks at the kernel's threads in /proc, WAIT apart (CPU use, and the
system call each sleeps in: only the kernel's parent may read that under Yama), asks
the agent's watcher for every thread's Python stack and faulthandler for the main
thread's (which works inside a C call), and writes ``where-NONCE.json``.

An interrupt that leaves the same cell running IGNORED_AFTER seconds later is looked
at the same way; the look is kept as ``interrupt.json``: ``where`` shows it, the logs
say it, and a kernel then ended by a restart is reported as hung.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field

from ..agent.private import read_private
from ..agent.protocol import (
    DUMPS,
    INTERRUPT,
    REQUEST,
    Frame,
    Look,
    LookCell,
    LookPhase,
    OsThread,
    PyThread,
    State,
    look_file,
    poke,
    read_answer,
    read_state,
    started_cell,
    write_look,
    write_request,
)
from ..probe import procfs
from ..probe.threads import TICKS, ThreadState, threads, verdict

WAIT = 0.25  # seconds between the two looks; the agent and faulthandler answer meanwhile
# How long a busy kernel's watcher thread may take to answer: it needs the GIL, which a
# pure-Python loop hands over every 5 ms and a C call that holds it never does.
AGENT_WAIT = 0.6
IGNORED_AFTER = 3.0
_NONCE = re.compile(r"^[0-9a-f]{8,32}$")


@dataclass
class _Look:
    nonce: str
    started: float
    first: list[ThreadState]
    dump_offset: int
    state: State
    extra: dict[str, float] = field(default_factory=dict)


class Inspector:
    def __init__(
        self,
        session_dir: str,
        kernel_pid: int,
        dump_signal: int | None,
        fd: int | None,
        watch_fd: int | None = None,
    ) -> None:
        self.session_dir = session_dir
        self.pid = kernel_pid
        self.dump_signal = dump_signal
        self.fd = fd  # the control FIFO (control.py)
        self.watch_fd = watch_fd  # wakes the agent's watcher thread, which answers
        self.looks: list[_Look] = []
        self.interrupt: tuple[float, int | None] | None = None  # (when, the busy cell)
        self.ignored: Look | None = None
        self._buffer = b""

    def due(self) -> float:
        now = time.monotonic()
        times = []
        for look in self.looks:
            # After WAIT, only the watcher's answer is awaited: look again soon.
            times.append(look.started + WAIT if now < look.started + WAIT else now + 0.02)
        if self.interrupt is not None:
            times.append(self.interrupt[0] + IGNORED_AFTER)
        return min(times, default=float("inf"))

    def on_control(self) -> None:
        try:
            self._buffer += os.read(self.fd, 4096) if self.fd is not None else b""
        except (BlockingIOError, InterruptedError):
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines[-8:]:  # a flood of requests is not our job to serve
            parts = line.decode("ascii", "replace").split()
            if len(parts) == 2 and parts[0] == "where" and _NONCE.match(parts[1]):
                self.start(parts[1])

    def interrupted(self) -> None:
        """A SIGINT reached the kernel: it should stop the running cell."""
        state = self._state()
        if state.busy:
            self.interrupt = (time.monotonic(), state.seq)

    def start(self, nonce: str, **extra: float) -> None:
        state = self._state()
        if state.busy:
            try:
                write_request(self.session_dir, nonce)  # for the watcher
            except OSError:
                pass
            else:
                self.watch_fd = poke(self.watch_fd, b"w")
        try:
            offset = os.path.getsize(os.path.join(self.session_dir, DUMPS))
        except OSError:
            offset = 0
        self.looks.append(_Look(nonce, time.monotonic(), threads(self.pid), offset, state, extra))
        if self.dump_signal is not None and procfs.catches(self.pid, self.dump_signal):
            from .signals import signal_thread

            signal_thread(self.pid, self.pid, self.dump_signal)  # the main thread's stack

    def tick(self) -> None:
        now = time.monotonic()
        for look in list(self.looks):
            waited = now - look.started
            if waited >= AGENT_WAIT or (waited >= WAIT and self._answered(look)):
                self.looks.remove(look)
                self._finish(look)
        if self.interrupt is not None and now >= self.interrupt[0] + IGNORED_AFTER:
            _, seq = self.interrupt
            self.interrupt = None
            state = self._state()
            if state.busy and state.seq == seq:
                self.start("interrupt", ignored_for=IGNORED_AFTER)

    def _answered(self, look: _Look) -> bool:
        """True when no answer from the watcher is to be waited for, or it is there."""
        if not look.state.busy:
            return True
        return not os.path.exists(os.path.join(self.session_dir, REQUEST))

    def _finish(self, look: _Look) -> None:
        second = {t.tid: t for t in threads(self.pid)}
        elapsed = max(1e-3, time.monotonic() - look.started)
        os_threads = []
        for before in look.first:
            after = second.get(before.tid, before)
            share = min(1.0, (after.cpu_ticks - before.cpu_ticks) / TICKS / elapsed)
            os_threads.append(
                OsThread(
                    tid=after.tid,
                    name=after.name,
                    state=after.state,
                    cpu_ticks=after.cpu_ticks,
                    wchan=after.wchan,
                    syscall=after.syscall,
                    target=after.target,
                    network_fs=after.network_fs,
                    cpu=round(share, 2),
                    verdict=verdict(after, share),
                )
            )
        state = self._state()
        if state.t is None:
            state = look.state
        reply = Look(
            nonce=look.nonce,
            t=time.time(),
            kernel_pid=self.pid,
            busy=state.busy,
            seq=state.seq,
            started=state.started,
            line=state.line,
            file=state.file,
            frame=list(state.frame) if state.frame else None,
            phase=LookPhase(phase=state.phase, error=state.error, depth=state.depth)
            if state.phase
            else None,
            cell=_cell(self.session_dir, state),
            verdict=os_threads[0]["verdict"] if os_threads else "gone",
            os_threads=os_threads,
            python=_agent_answer(self.session_dir, look.nonce),
            main_dump=_dump_since(self.session_dir, look.dump_offset),
            ignored_interrupt=self.ignored,
        )
        if "ignored_for" in look.extra:
            reply["ignored_for"] = look.extra["ignored_for"]
        try:
            if look.nonce == "interrupt":
                # Kept without the earlier one it carries: looks never nest deeper.
                self.ignored = reply.copy()
                self.ignored.pop("ignored_interrupt", None)
                write_look(os.path.join(self.session_dir, INTERRUPT), reply)
                _log_ignored(reply)
                return
            write_look(os.path.join(self.session_dir, look_file(look.nonce)), reply)
        except OSError:
            pass

    def _state(self) -> State:
        return read_state(self.session_dir) or State()


def _cell(session_dir: str, state: State) -> LookCell | None:
    if not state.busy:
        return None
    record = started_cell(session_dir, state.seq)
    if record is None:
        return None
    return LookCell(
        execution_count=record.execution_count,
        source=record.source,
        t=record.t,
        cell_id=record.cell_id,
    )


def _agent_answer(session_dir: str, nonce: str) -> list[PyThread] | None:
    answer = read_answer(session_dir, nonce)
    try:
        os.unlink(os.path.join(session_dir, REQUEST))  # unanswered: withdrawn
    except OSError:
        pass
    return answer


def _dump_since(session_dir: str, offset: int) -> list[Frame] | None:
    from ..diagnosis.stacks import parse_faulthandler

    data = read_private(os.path.join(session_dir, DUMPS)) or b""
    dumps = parse_faulthandler(data[offset:].decode("utf-8", "replace"))
    if not dumps:
        return None
    return [[fr.file, fr.line, fr.function] for fr in dumps[0].frames]


def _log_ignored(reply: Look) -> None:
    from ..diagnosis.hang import describe

    sys.stderr.write(f"kernel-doctor: {describe(reply, interrupt=True)}\n")
    sys.stderr.flush()
