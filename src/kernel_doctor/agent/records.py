"""The typed records of the session protocol (``protocol`` reads and writes them).

Each is built from JSON by ``from_json``, which takes anything (a record written by
another version, or planted) and returns None where the record's types are wrong:
readers then treat it as absent. Standard library only (see ``protocol``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, NamedTuple, TypedDict


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _load(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _float(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


# -- meta.json ------------------------------------------------------------------


@dataclass(frozen=True)
class LimitRecord:
    limit_bytes: int
    kind: str  # "cgroup-v1", "cgroup-v2", "system"
    source: str  # said to the user: "cgroup v2 memory.max of /sys/fs/cgroup/…"
    path: str | None = None  # the cgroup's folder

    @classmethod
    def from_json(cls, obj: object) -> LimitRecord | None:
        if not isinstance(obj, dict):
            return None
        limit, kind, source = _int(obj.get("limit_bytes")), obj.get("kind"), obj.get("source")
        if limit is None or not isinstance(kind, str) or not isinstance(source, str):
            return None
        return cls(limit, kind, source, _str(obj.get("path")))

    def to_json(self) -> dict[str, Any]:
        return {
            "limit_bytes": self.limit_bytes,
            "kind": self.kind,
            "source": self.source,
            "path": self.path,
        }


@dataclass(frozen=True)
class GuardInfo:
    """The memory guard's setting, and its allocation layer's state."""

    enabled: bool
    threshold: str  # as the user gave it: "90%", "3G", "off"
    threshold_bytes: int
    allocation: bool = False  # whether the allocation layer exists at all
    reserve_bytes: int | None = None
    ceiling_bytes: int | None = None
    allocation_error: str | None = None

    @classmethod
    def from_json(cls, obj: object) -> GuardInfo | None:
        if not isinstance(obj, dict):
            return None
        threshold, limit = _str(obj.get("threshold")), _int(obj.get("threshold_bytes"))
        if threshold is None or limit is None:
            return None
        alloc = obj.get("allocation")
        layer = alloc if isinstance(alloc, dict) else {}
        return cls(
            bool(obj.get("enabled")),
            threshold,
            limit,
            isinstance(alloc, dict),
            _int(layer.get("reserve_bytes")),
            _int(layer.get("ceiling_bytes")),
            _str(layer.get("error")),
        )

    def to_json(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "enabled": self.enabled,
            "threshold": self.threshold,
            "threshold_bytes": self.threshold_bytes,
        }
        if self.allocation:
            described["allocation"] = {
                "reserve_bytes": self.reserve_bytes,
                "ceiling_bytes": self.ceiling_bytes,
                "error": self.allocation_error,
            }
        return described


@dataclass(frozen=True)
class Meta:
    supervisor_pid: int
    # The supervisor's start time (clock ticks after boot, /proc/PID/stat field 22):
    # with the pid it names one process, never a later one that reuses the pid.
    supervisor_start: int | None
    kernel_pid: int
    started: float  # epoch seconds
    host: str = ""
    kernel_argv: tuple[str, ...] = ()
    connection_file: str | None = None
    kernel_name: str | None = None
    session_name: str | None = None  # JPY_SESSION_NAME: the notebook, under a server
    agent: bool = False
    limit: LimitRecord | None = None
    oom_kills_before: int | None = None
    # The cgroup's high-water mark before the kernel started (see supervisor.monitor).
    peak_before: int | None = None
    rlimits: dict[str, int] = field(default_factory=dict)
    guard: GuardInfo | None = None

    @classmethod
    def from_json(cls, obj: object) -> Meta | None:
        if not isinstance(obj, dict):
            return None
        sup, kernel, started = (
            _int(obj.get("supervisor_pid")),
            _int(obj.get("kernel_pid")),
            _float(obj.get("started")),
        )
        if sup is None or kernel is None or started is None:
            return None
        argv = obj.get("kernel_argv")
        rlimits = obj.get("rlimits")
        return cls(
            supervisor_pid=sup,
            supervisor_start=_int(obj.get("supervisor_start")),
            kernel_pid=kernel,
            started=started,
            host=_str(obj.get("host")) or "",
            kernel_argv=tuple(a for a in argv if isinstance(a, str))
            if isinstance(argv, list)
            else (),
            connection_file=_str(obj.get("connection_file")),
            kernel_name=_str(obj.get("kernel_name")),
            session_name=_str(obj.get("session_name")),
            agent=obj.get("agent") is True,
            limit=LimitRecord.from_json(obj.get("limit")),
            oom_kills_before=_int(obj.get("oom_kills_before")),
            peak_before=_int(obj.get("peak_before")),
            rlimits={k: v for k, v in rlimits.items() if _int(v) is not None}
            if isinstance(rlimits, dict)
            else {},
            guard=GuardInfo.from_json(obj.get("guard")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "supervisor_pid": self.supervisor_pid,
            "supervisor_start": self.supervisor_start,
            "kernel_pid": self.kernel_pid,
            "started": self.started,
            "host": self.host,
            "kernel_argv": list(self.kernel_argv),
            "connection_file": self.connection_file,
            "kernel_name": self.kernel_name,
            "session_name": self.session_name,
            "agent": self.agent,
            "limit": self.limit.to_json() if self.limit else None,
            "oom_kills_before": self.oom_kills_before,
            "peak_before": self.peak_before,
            "rlimits": dict(self.rlimits),
            "guard": self.guard.to_json() if self.guard else None,
        }

    @property
    def label(self) -> str:
        """The notebook where a server named it, else kernelspec and connection file."""
        if self.session_name:
            return self.session_name
        parts = (self.kernel_name or "", os.path.basename(self.connection_file or ""))
        return " ".join(p for p in parts if p) or "-"


# -- the state record -------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """The agent's state record, as ``StateFile.read`` puts it together from the JSON
    the agent writes by hand and the binary part it writes at each cell and statement."""

    pid: int | None = None
    main_thread: int | None = None  # threading ident of the kernel's main thread
    dump_signal: int | None = None
    busy: bool = False
    seq: int | None = None  # the running (or last) cell's sequence number
    started: float | None = None  # when the running cell started
    t: float | None = None  # when this record was written
    file: str | None = None  # the running cell's code file
    line: int | None = None  # the running cell's current line
    frame: tuple[str, int, str] | None = None  # innermost frame: file, line, function
    guard: str | None = None  # %doctor guard's setting, for the supervisor
    phase: str | None = None  # "traceback" while IPython formats one
    error: str | None = None  # the exception type being formatted
    depth: int | None = None  # and its traceback's depth

    @classmethod
    def from_json(cls, obj: object) -> State | None:
        if not isinstance(obj, dict):
            return None
        frame = obj.get("frame")
        typed_frame = None
        if isinstance(frame, list) and len(frame) == 3:
            file, line, function = frame
            if isinstance(file, str) and _int(line) is not None and isinstance(function, str):
                typed_frame = (file, int(line), function)
        return cls(
            pid=_int(obj.get("pid")),
            main_thread=_int(obj.get("main_thread")),
            dump_signal=_int(obj.get("dump_signal")),
            busy=obj.get("busy") is True,
            seq=_int(obj.get("seq")),
            started=_float(obj.get("started")),
            t=_float(obj.get("t")),
            file=_str(obj.get("file")),
            line=_int(obj.get("line")),
            frame=typed_frame,
            guard=_str(obj.get("guard")),
            phase=_str(obj.get("phase")),
            error=_str(obj.get("error")),
            depth=_int(obj.get("depth")),
        )


# -- cells.jsonl -------------------------------------------------------------------


class GuardStop(TypedDict, total=False):
    """The memory guard's record of a cell it stopped: the threshold layer's (the
    supervisor's ``GuardTrip``, tripped) or the allocation layer's (a refused request)."""

    tripped: bool
    layer: str  # "threshold" or "allocation"
    usage_bytes: int | None
    limit_bytes: int | None
    limit_source: str | None
    threshold_text: str
    threshold_bytes: int
    request_bytes: int | None
    ceiling_bytes: int


class CellError(TypedDict, total=False):
    """A cell's exception, as the agent describes it (``agent.errors``)."""

    type: str
    message: str
    line: int | None  # in the cell
    stack: list[tuple[str, int, str]]  # (file, line, function), outermost first
    guard: GuardStop  # when the memory guard stopped the cell


_GUARD_STOP: dict[str, tuple[type, ...]] = {
    "tripped": (bool,),
    "layer": (str,),
    "usage_bytes": (int, type(None)),
    "limit_bytes": (int, type(None)),
    "limit_source": (str, type(None)),
    "threshold_text": (str,),
    "threshold_bytes": (int,),
    "request_bytes": (int, type(None)),
    "ceiling_bytes": (int,),
}


def _guard_stop(obj: object) -> GuardStop | None:
    if not isinstance(obj, dict):
        return None
    kept = {k: v for k, v in obj.items() if k in _GUARD_STOP and isinstance(v, _GUARD_STOP[k])}
    stop: GuardStop = kept  # type: ignore[assignment]  # each key checked above
    return stop


def _cell_error(obj: object) -> CellError | None:
    if not isinstance(obj, dict):
        return None
    error = CellError(
        type=_str(obj.get("type")) or "Exception",
        message=_str(obj.get("message")) or "",
        line=_int(obj.get("line")),
        stack=[],
    )
    stack = obj.get("stack")
    for frame in stack if isinstance(stack, list) else ():
        if isinstance(frame, list) and len(frame) == 3:
            file, line, function = frame
            if isinstance(file, str) and _int(line) is not None and isinstance(function, str):
                error["stack"].append((file, line, function))
    guard = _guard_stop(obj.get("guard"))
    if guard is not None:
        error["guard"] = guard
    return error


@dataclass(frozen=True)
class CellRecord:
    """One line of the flight record: a cell's ``start`` or ``end``, the agent being
    ``ready``, or the interpreter's clean ``exit``."""

    event: str
    t: float
    seq: int | None = None
    execution_count: int | None = None
    cell_id: str | None = None
    source: str | None = None
    file: str | None = None  # the code file IPython compiled the cell under (end)
    error: CellError | None = None  # the cell's exception, at its end
    pid: int | None = None  # the kernel's pid (ready)

    @classmethod
    def from_json(cls, obj: object) -> CellRecord | None:
        if not isinstance(obj, dict):
            return None
        event, t = _str(obj.get("event")), _float(obj.get("t"))
        if event is None or t is None:
            return None
        return cls(
            event,
            t,
            _int(obj.get("seq")),
            _int(obj.get("execution_count")),
            _str(obj.get("cell_id")),
            _str(obj.get("source")),
            _str(obj.get("file")),
            _cell_error(obj.get("error")),
            _int(obj.get("pid")),
        )

    @staticmethod
    def line(
        event: str,
        t: float,
        seq: int | None = None,
        execution_count: int | None = None,
        cell_id: str | None = None,
        source: str | None = None,
        file: str | None = None,
        error: CellError | None = None,
        pid: int | None = None,
    ) -> bytes:
        """A record's line without making the record: every cell's start and end write
        one, and a frozen dataclass of nine fields costs microseconds. Built by hand:
        ``json.dumps`` of the dict cost ~20 µs a record in a running kernel, cold."""
        text = f'{{"event":{_json_str(event)},"t":{t!r}'
        if seq is not None:
            text += f',"seq":{seq}'
        if execution_count is not None:
            text += f',"execution_count":{execution_count}'
        if cell_id is not None:
            text += f',"cell_id":{_json_str(cell_id)}'
        if source is not None:
            text += f',"source":{_json_str(source)}'
        if file is not None:
            text += f',"file":{_json_str(file)}'
        if error is not None:
            text += f',"error":{json.dumps(error)}'
        if pid is not None:
            text += f',"pid":{pid}'
        return f"{text}}}\n".encode()

    def to_line(self) -> bytes:
        return CellRecord.line(
            self.event, self.t, self.seq, self.execution_count, self.cell_id,
            self.source, self.file, self.error, self.pid,
        )  # fmt: skip


class Sample(NamedTuple):
    elapsed: float  # seconds since the kernel started
    counted: int  # bytes the limit counts
    kernel_rss: int  # RSS of the kernel's process tree


@dataclass(frozen=True)
class Event:
    kind: str  # "signal", "dump", "guard", "mark", …
    t: float
    offset: int | None = None  # a dump's byte offset into dumps.txt


class GuardTrip(TypedDict):
    """What the supervisor saw when it tripped the memory guard."""

    seq: int
    usage_bytes: int
    limit_bytes: int
    limit_source: str
    threshold_text: str
    threshold_bytes: int
