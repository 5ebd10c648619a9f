"""The report contract (README "The report contract"; keep it stable), typed.

A report has one writer, ``Report.to_json``, and one reader, ``Report.from_json``:
every report that comes from a file or another process (stored reports, the server's
endpoints, the previous death's notice) is read through ``from_json``, which checks
each field's type and raises ``BadReport`` naming the first wrong one. Readers are
lenient about *missing* keys (a report of an older version, one made by hand): they
take their documented empty value (null, [] or {}). Only ``outcome`` is required.
Keys this version does not know (a newer version's) are kept as they are, in
``extra``, and written back after the known ones.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from .. import __version__
from ..diagnosis import Diagnosis
from ..diagnosis.stacks import user_frames
from ..evidence import Evidence, Frame
from ..probe.procfs import signal_name
from .fields import JSON, BadReport, Fields, Scalar

__all__ = ["JSON", "BadReport", "Cell", "Kernel", "Memory", "Report", "StackFrame"]


@dataclass(frozen=True)
class Cell:
    index: int | None = None  # 0-based among all cells, markdown included; by `run`
    execution_count: int | None = None
    id: str | None = None
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "execution_count": self.execution_count,
            "id": self.id,
            "source": self.source,
        }

    @classmethod
    def read(cls, obj: Fields) -> Cell:
        return cls(
            obj.opt_int("index"),
            obj.opt_int("execution_count"),
            obj.opt_text("id"),
            obj.text("source", ""),
        )


@dataclass(frozen=True)
class StackFrame:
    file: str
    line: int | None
    function: str
    cell_index: int | None = None  # the notebook's position; filled in by `run`
    execution_count: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "function": self.function,
            "cell_index": self.cell_index,
            "execution_count": self.execution_count,
        }

    @classmethod
    def read(cls, obj: Fields) -> StackFrame:
        return cls(
            obj.text("file", ""),
            obj.opt_int("line"),
            obj.text("function", ""),
            obj.opt_int("cell_index"),
            obj.opt_int("execution_count"),
        )


@dataclass(frozen=True)
class Memory:
    peak_bytes: int | None = None
    kernel_peak_bytes: int | None = None
    limit_bytes: int | None = None
    limit_source: str | None = None
    limit_kind: str | None = None
    timeline: tuple[tuple[float, int], ...] = ()  # (seconds since start, bytes counted)
    threshold_bytes: int | None = None  # the memory guard's threshold, if it was on
    # When each cell started, on the timeline's clock: (seconds since start, In [N]).
    cell_starts: tuple[tuple[float, int | None], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_bytes": self.peak_bytes,
            "kernel_peak_bytes": self.kernel_peak_bytes,
            "limit_bytes": self.limit_bytes,
            "limit_source": self.limit_source,
            "limit_kind": self.limit_kind,
            "timeline": [[t, c] for t, c in self.timeline],
            "threshold_bytes": self.threshold_bytes,
            "cell_starts": [[t, count] for t, count in self.cell_starts],
        }

    @classmethod
    def read(cls, obj: Fields) -> Memory:
        return cls(
            obj.opt_int("peak_bytes"),
            obj.opt_int("kernel_peak_bytes"),
            obj.opt_int("limit_bytes"),
            obj.opt_text("limit_source"),
            obj.opt_text("limit_kind"),
            obj.points("timeline"),
            obj.opt_int("threshold_bytes"),
            obj.cell_starts("cell_starts"),
        )


@dataclass(frozen=True)
class Guard:
    """Only when the memory guard stopped a cell (``run``'s cell_error)."""

    tripped: bool = True
    layer: str | None = None  # "allocation" | "threshold"
    usage_bytes: int | None = None
    limit_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "tripped": self.tripped,
            "layer": self.layer,
            "usage_bytes": self.usage_bytes,
            "limit_bytes": self.limit_bytes,
        }

    @classmethod
    def read(cls, obj: Fields) -> Guard:
        return cls(
            obj.flag("tripped", True),
            obj.opt_text("layer"),
            obj.opt_int("usage_bytes"),
            obj.opt_int("limit_bytes"),
        )


@dataclass(frozen=True)
class Hang:
    """Only on a timeout: what the cell was doing, as ``kernel-doctor where`` saw it."""

    summary: str = ""
    verdict: str | None = None
    phase: JSON = None  # {phase, error, depth} while IPython formats a traceback
    threads: JSON = None  # the OS threads, as `where --json` lists them

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "verdict": self.verdict,
            "phase": self.phase,
            "threads": self.threads,
        }

    @classmethod
    def read(cls, obj: Fields) -> Hang:
        return cls(
            obj.text("summary", ""),
            obj.opt_text("verdict"),
            obj.opt_json("phase", dict, "an object or null"),
            obj.opt_json("threads", list, "a list or null"),
        )


@dataclass(frozen=True)
class Interrupt:
    """Only on a timeout: the interrupt sent after it, and whether it stopped the cell."""

    sent: bool = False
    worked: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "worked": self.worked}

    @classmethod
    def read(cls, obj: Fields) -> Interrupt:
        return cls(obj.flag("sent", False), obj.flag("worked", False))


@dataclass(frozen=True)
class Kernel:
    """Only in stored reports (a supervisor's): which kernel died."""

    pid: int | None = None
    argv: tuple[str, ...] = ()
    connection_file: str | None = None
    name: str | None = None
    session_name: str | None = None  # JPY_SESSION_NAME: the notebook, under a server
    started: float | None = None  # epoch seconds
    ended: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "argv": list(self.argv),
            "connection_file": self.connection_file,
            "name": self.name,
            "session_name": self.session_name,
            "started": self.started,
            "ended": self.ended,
        }

    @classmethod
    def read(cls, obj: Fields) -> Kernel:
        return cls(
            obj.opt_int("pid"),
            obj.texts("argv"),
            obj.opt_text("connection_file"),
            obj.opt_text("name"),
            obj.opt_text("session_name"),
            obj.opt_number("started"),
            obj.opt_number("ended"),
        )


# Every key this version knows, in the order written: the extra keys follow.
KEYS = (
    "kernel_doctor",
    "id",
    "created",
    "outcome",
    "cause",
    "summary",
    "signal",
    "exit_code",
    "cell",
    "line",
    "stack",
    "memory",
    "evidence",
    "advice",
    "kernel",
    "stderr_tail",
    "guard",
    "hang",
    "interrupt",
)


@dataclass(frozen=True)
class Report:
    outcome: str  # "ok" | "cell_error" | "kernel_died" | "timeout"
    summary: str = ""
    id: str | None = None  # "<YYYYmmdd-HHMMSS>-<pid>" for a stored report
    created: Scalar = None  # local time, "%Y-%m-%dT%H:%M:%S%z"
    version: Scalar = None  # the "kernel_doctor" key: the version that wrote it
    cause: str | None = None
    signal: str | None = None  # "SIGKILL"
    exit_code: int | None = None
    cell: Cell | None = None
    line: int | None = None
    stack: tuple[StackFrame, ...] = ()  # innermost last
    memory: Memory = field(default_factory=Memory)
    evidence: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()
    kernel: Kernel | None = None  # these four are written only when there is one
    stderr_tail: str | None = None
    guard: Guard | None = None
    hang: Hang | None = None
    interrupt: Interrupt | None = None
    extra: Mapping[str, JSON] = field(default_factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        """The report as the README documents it: every key always present (null or
        empty when unknown), except kernel, stderr_tail, guard, hang and interrupt,
        present only when there is one."""
        doc: dict[str, Any] = {
            "kernel_doctor": self.version,
            "id": self.id,
            "created": self.created,
            "outcome": self.outcome,
            "cause": self.cause,
            "summary": self.summary,
            "signal": self.signal,
            "exit_code": self.exit_code,
            "cell": self.cell.to_json() if self.cell else None,
            "line": self.line,
            "stack": [frame.to_json() for frame in self.stack],
            "memory": self.memory.to_json(),
            "evidence": list(self.evidence),
            "advice": list(self.advice),
        }
        if self.kernel is not None:
            doc["kernel"] = self.kernel.to_json()
        if self.stderr_tail is not None:
            doc["stderr_tail"] = self.stderr_tail
        for key, part in (
            ("guard", self.guard),
            ("hang", self.hang),
            ("interrupt", self.interrupt),
        ):
            if part is not None:
                doc[key] = part.to_json()
        doc.update((k, v) for k, v in self.extra.items() if k not in doc)
        return doc

    @classmethod
    def from_json(cls, obj: object) -> Report:
        """The report in ``obj`` (what json.loads made of one), its types checked.
        Raises ``BadReport`` naming the first field of a wrong type."""
        doc = Fields(obj, "")
        if "outcome" not in doc.values:
            raise BadReport("outcome", "missing (every report has one)")
        stack = []
        for i, frame in enumerate(doc.items("stack")):
            stack.append(StackFrame.read(Fields(frame, f"stack[{i}]")))
        cell, kernel = doc.opt_object("cell"), doc.opt_object("kernel")
        guard, hang, interrupt = (doc.opt_object(k) for k in ("guard", "hang", "interrupt"))
        return cls(
            outcome=doc.text("outcome"),
            summary=doc.text("summary", ""),
            id=doc.opt_text("id"),
            created=doc.scalar("created"),
            version=doc.scalar("kernel_doctor"),
            cause=doc.opt_text("cause"),
            signal=doc.opt_text("signal"),
            exit_code=doc.opt_int("exit_code"),
            cell=Cell.read(cell) if cell else None,
            line=doc.opt_int("line"),
            stack=tuple(stack),
            memory=Memory.read(doc.object("memory")),
            evidence=doc.texts("evidence"),
            advice=doc.texts("advice"),
            kernel=Kernel.read(kernel) if kernel else None,
            stderr_tail=doc.opt_text("stderr_tail"),
            guard=Guard.read(guard) if guard else None,
            hang=Hang.read(hang) if hang else None,
            interrupt=Interrupt.read(interrupt) if interrupt else None,
            extra=cast("dict[str, JSON]", {k: v for k, v in doc.values.items() if k not in KEYS}),
        )


# -- reports made here -------------------------------------------------------------


def stack_frame(frame: Frame, ev: Evidence | None) -> StackFrame:
    count = None
    if ev is not None:
        for cell in ev.cells:
            if cell.file and cell.file == frame.file:
                count = cell.execution_count
        running = ev.running_cell
        if running is not None and ev.state.file == frame.file:
            count = running.execution_count
    return StackFrame(frame.file, frame.line, frame.function, None, count)


def death_report(ev: Evidence, dx: Diagnosis, report_id: str) -> Report:
    """The stored report of a kernel's death."""
    mem = ev.memory
    cell = dx.cell
    limit = mem.limit
    return Report(
        version=__version__,
        id=report_id,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ev.ended)),
        outcome="kernel_died",
        cause=dx.cause,
        summary=dx.summary,
        signal=signal_name(ev.signal) if ev.signal is not None else None,
        exit_code=ev.exit_code,
        cell=None if cell is None else Cell(None, cell.execution_count, cell.cell_id, cell.source),
        line=dx.line,
        stack=tuple(stack_frame(f, ev) for f in user_frames(dx.stack)),
        memory=Memory(
            mem.peak_bytes,
            mem.kernel_peak_bytes,
            limit.limit_bytes if limit else None,
            limit.source if limit else None,
            limit.kind if limit else None,
            tuple(mem.timeline),
            _int_or_none(ev.guard.get("threshold_bytes")) if ev.guard.get("enabled") else None,
            tuple((round(c.started - ev.started, 3), c.execution_count) for c in ev.cells),
        ),
        evidence=tuple(dx.evidence),
        advice=tuple(dx.advice),
        kernel=Kernel(
            ev.pid,
            tuple(ev.kernel_argv),
            ev.connection_file,
            ev.kernel_name,
            ev.session_name,
            ev.started,
            ev.ended,
        ),
        stderr_tail=ev.stderr_tail[-8000:],
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def empty_report(outcome: str, summary: str) -> dict[str, Any]:
    """A report for runs where nothing died (ok, cell_error, timeout), as JSON: ``run``
    fills it in."""
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return Report(outcome, summary, created=created, version=__version__).to_json()
