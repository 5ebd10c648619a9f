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

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..agent.layout import STATE, StateFile, read_cells
from ..agent.where import ANSWER, REQUEST
from ..probe import procfs
from ..probe.threads import TICKS, ThreadState, threads, verdict

INTERRUPT = "interrupt.json"
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
    state: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


class Inspector:
    def __init__(
        self, session_dir: str, kernel_pid: int, dump_signal: int | None, fd: int | None
    ) -> None:
        self.session_dir = session_dir
        self.pid = kernel_pid
        self.dump_signal = dump_signal
        self.fd = fd  # the control FIFO (control.py)
        self.looks: list[_Look] = []
        self.interrupt: tuple[float, Any] | None = None  # (when, the busy cell's seq)
        self.ignored: dict[str, Any] | None = None
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
        if state.get("busy"):
            self.interrupt = (time.monotonic(), state.get("seq"))

    def start(self, nonce: str, **extra: Any) -> None:
        state = self._state()
        if state.get("busy"):
            _write(os.path.join(self.session_dir, REQUEST), nonce)  # for the watcher
        try:
            offset = os.path.getsize(os.path.join(self.session_dir, "dumps.txt"))
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
            if state.get("busy") and state.get("seq") == seq:
                self.start("interrupt", ignored_for=IGNORED_AFTER)

    def _answered(self, look: _Look) -> bool:
        """True when no answer from the watcher is to be waited for, or it is there."""
        if not look.state.get("busy"):
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
                {**after.to_json(), "cpu": round(share, 2), "verdict": verdict(after, share)}
            )
        state = self._state() or look.state
        reply: dict[str, Any] = {
            "nonce": look.nonce,
            "t": time.time(),
            "kernel_pid": self.pid,
            "busy": bool(state.get("busy")),
            "seq": state.get("seq"),
            "started": state.get("started"),
            "line": state.get("line"),
            "file": state.get("file"),
            "frame": state.get("frame"),
            "phase": {k: state.get(k) for k in ("phase", "error", "depth")}
            if state.get("phase")
            else None,
            "cell": _cell(self.session_dir, state),
            "verdict": os_threads[0]["verdict"] if os_threads else "gone",
            "os_threads": os_threads,
            "python": _agent_answer(self.session_dir, look.nonce),
            "main_dump": _dump_since(self.session_dir, look.dump_offset),
            "ignored_interrupt": self.ignored,
            **look.extra,
        }
        if look.nonce == "interrupt":
            self.ignored = reply
            _write(os.path.join(self.session_dir, INTERRUPT), json.dumps(reply))
            _log_ignored(reply)
            return
        _write(os.path.join(self.session_dir, f"where-{look.nonce}.json"), json.dumps(reply))

    def _state(self) -> dict[str, Any]:
        try:
            state = StateFile(os.path.join(self.session_dir, STATE), writable=False)
        except (OSError, ValueError):
            return {}
        try:
            return state.read() or {}
        finally:
            state.close()


def _write(path: str, text: str) -> None:
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    except OSError:
        pass


def _cell(session_dir: str, state: dict[str, Any]) -> dict[str, Any] | None:
    if not state.get("busy"):
        return None
    for record in reversed(read_cells(session_dir)):
        if record.get("event") == "start" and record.get("seq") == state.get("seq"):
            return {k: record.get(k) for k in ("execution_count", "source", "t", "cell_id")}
    return None


def _agent_answer(session_dir: str, nonce: str) -> list[dict[str, Any]] | None:
    try:
        with open(os.path.join(session_dir, ANSWER), encoding="utf-8") as f:
            answer = json.load(f)
    except (OSError, ValueError):
        answer = None
    with_nonce = isinstance(answer, dict) and answer.get("nonce") == nonce
    try:
        os.unlink(os.path.join(session_dir, REQUEST))  # unanswered: withdrawn
    except OSError:
        pass
    return answer.get("threads") if with_nonce and isinstance(answer, dict) else None


def _dump_since(session_dir: str, offset: int) -> list[list[Any]] | None:
    from ..diagnosis.stacks import parse_faulthandler

    try:
        with open(os.path.join(session_dir, "dumps.txt"), "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    dumps = parse_faulthandler(text)
    if not dumps:
        return None
    return [[fr.file, fr.line, fr.function] for fr in dumps[0].frames]


def _log_ignored(reply: dict[str, Any]) -> None:
    from ..diagnosis.hang import describe

    sys.stderr.write(f"kernel-doctor: {describe(reply, interrupt=True)}\n")
    sys.stderr.flush()
