"""What the supervisor knows when a kernel ends: plain, frozen data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .agent.protocol import CellError, Look, State
from .probe.base import MemoryLimit


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    function: str


@dataclass(frozen=True)
class StackDump:
    """One thread's stack from a faulthandler dump, innermost frame last."""

    thread: str  # faulthandler's "0x00007f…" thread id
    frames: tuple[Frame, ...]
    truncated: bool = False  # faulthandler stops after 100 frames
    fatal: str | None = None  # "Segmentation fault" etc. for a crash dump
    current: bool = False  # the thread that received the signal


@dataclass(frozen=True)
class CellRun:
    """One cell as the agent recorded it."""

    seq: int
    execution_count: int | None
    cell_id: str | None
    source: str
    started: float
    ended: float | None = None
    file: str | None = None  # the code file name IPython compiled it under
    error: CellError | None = None


@dataclass(frozen=True)
class MemoryEvidence:
    limit: MemoryLimit | None
    timeline: tuple[tuple[float, int], ...] = ()  # (seconds since start, counted bytes)
    peak_bytes: int | None = None  # peak of what the limit counts
    kernel_peak_bytes: int | None = None  # peak RSS of the kernel's process tree
    kernel_last_bytes: int | None = None
    oom_kills_before: int | None = None
    oom_kills_after: int | None = None
    rlimits: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    kernel_argv: tuple[str, ...]
    pid: int
    started: float  # epoch seconds
    ended: float
    exit_code: int | None  # None when a signal ended it
    signal: int | None
    requested: str | None  # why the end was asked for ("SIGTERM", …), if it was
    agent_ready: bool
    clean_exit: bool  # the interpreter ran its exit handlers
    memory: MemoryEvidence
    cells: tuple[CellRun, ...] = ()
    state: State = field(default_factory=State)  # the agent's last state record
    dumps: tuple[tuple[StackDump, ...], ...] = ()  # on-demand dumps, oldest first
    fatal: tuple[StackDump, ...] = ()  # the crash dump's threads
    stderr_tail: str = ""
    kernel_log: tuple[str, ...] = ()
    connection_file: str | None = None
    supervisor_lost: bool = False  # rebuilt from what a dead supervisor left
    kernel_name: str | None = None  # the kernelspec's name, where a twin passed it
    session_name: str | None = None  # JPY_SESSION_NAME: the notebook, under a server
    guard: dict[str, Any] = field(default_factory=dict)  # its setting, and "signals" sent
    hang: Look | None = None  # the look at an ignored interrupt

    @property
    def running_cell(self) -> CellRun | None:
        """The cell that started and never ended."""
        if self.cells and self.cells[-1].ended is None:
            return self.cells[-1]
        return None

    @property
    def main_thread(self) -> str | None:
        ident = self.state.main_thread
        return f"0x{ident:016x}" if ident is not None else None
