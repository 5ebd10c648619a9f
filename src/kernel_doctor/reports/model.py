"""The report contract (README documents it; keep it stable)."""

from __future__ import annotations

import time
from typing import Any

from .. import __version__
from ..diagnosis import Diagnosis
from ..diagnosis.stacks import user_frames
from ..evidence import Evidence, Frame
from ..probe.procfs import signal_name


def frame_json(frame: Frame, ev: Evidence | None) -> dict[str, Any]:
    count = None
    if ev is not None:
        for cell in ev.cells:
            if cell.file and cell.file == frame.file:
                count = cell.execution_count
        running = ev.running_cell
        if running is not None and ev.state.get("file") == frame.file:
            count = running.execution_count
    return {
        "file": frame.file,
        "line": frame.line,
        "function": frame.function,
        "cell_index": None,  # the notebook's position; filled in by `run`
        "execution_count": count,
    }


def death_report(ev: Evidence, dx: Diagnosis, report_id: str) -> dict[str, Any]:
    mem = ev.memory
    cell = dx.cell
    return {
        "kernel_doctor": __version__,
        "id": report_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ev.ended)),
        "outcome": "kernel_died",
        "cause": dx.cause,
        "summary": dx.summary,
        "signal": signal_name(ev.signal) if ev.signal is not None else None,
        "exit_code": ev.exit_code,
        "cell": None
        if cell is None
        else {
            "index": None,
            "execution_count": cell.execution_count,
            "id": cell.cell_id,
            "source": cell.source,
        },
        "line": dx.line,
        "stack": [frame_json(f, ev) for f in user_frames(dx.stack)],
        "memory": {
            "peak_bytes": mem.peak_bytes,
            "kernel_peak_bytes": mem.kernel_peak_bytes,
            "limit_bytes": mem.limit.limit_bytes if mem.limit else None,
            "limit_source": mem.limit.source if mem.limit else None,
            "limit_kind": mem.limit.kind if mem.limit else None,
            "timeline": [[t, c] for t, c in mem.timeline],
        },
        "evidence": list(dx.evidence),
        "advice": list(dx.advice),
        "kernel": {
            "pid": ev.pid,
            "argv": list(ev.kernel_argv),
            "connection_file": ev.connection_file,
            "name": ev.kernel_name,
            "session_name": ev.session_name,
            "started": ev.started,
            "ended": ev.ended,
        },
        "stderr_tail": ev.stderr_tail[-8000:],
    }


def empty_report(outcome: str, summary: str) -> dict[str, Any]:
    """A report for runs where nothing died (ok, cell_error, timeout)."""
    return {
        "kernel_doctor": __version__,
        "id": None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "outcome": outcome,
        "cause": None,
        "summary": summary,
        "signal": None,
        "exit_code": None,
        "cell": None,
        "line": None,
        "stack": [],
        "memory": {
            "peak_bytes": None,
            "kernel_peak_bytes": None,
            "limit_bytes": None,
            "limit_source": None,
            "limit_kind": None,
            "timeline": [],
        },
        "evidence": [],
        "advice": [],
    }
