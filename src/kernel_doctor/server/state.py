"""What the server extension serves, read from disk: stored reports this user may read,
and the live state of supervised kernels (without asking their supervisors)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ..agent.layout import last_sample
from ..live import live_kernels
from ..reports.history import list_reports
from ..reports.store import reports_dir

# jupyter_server names a kernel's connection file kernel-<kernel id>.json.
_KERNEL_FILE = re.compile(r"^kernel-([0-9a-fA-F-]+)\.json$")


def _readable(path: str) -> bool:
    """Served only if this process's user could read it on disk."""
    try:
        return os.access(path, os.R_OK) and os.stat(path).st_uid == os.getuid()
    except OSError:
        return False


def readable_reports() -> list[dict[str, Any]]:
    return [
        doc
        for doc in list_reports()
        if _readable(os.path.join(reports_dir(), f"{doc.get('id')}.json"))
    ]


def report_path(report_id: str) -> str | None:
    path = os.path.join(reports_dir(), f"{report_id}.json")
    return path if os.path.isfile(path) and _readable(path) else None


def kernel_id_of(connection_file: str | None) -> str | None:
    match = _KERNEL_FILE.match(os.path.basename(connection_file or ""))
    return match.group(1) if match else None


def kernel_states(kernel_ids: set[str]) -> list[dict[str, Any]]:
    """Supervised kernels among ``kernel_ids`` (this server's), as the frontend and the
    metrics need them: running cell and line, memory against the limit, guard."""
    states = []
    for kernel in live_kernels():
        kernel_id = kernel_id_of(kernel.meta.get("connection_file"))
        if kernel_id is None or kernel_id not in kernel_ids:
            continue
        sample = last_sample(kernel.session_dir)
        limit = kernel.meta.get("limit") or {}
        state = kernel.state
        states.append(
            {
                "kernel_id": kernel_id,
                "session_dir": kernel.session_dir,
                "pid": kernel.kernel_pid,
                "notebook": kernel.meta.get("session_name"),
                "busy": kernel.busy,
                "since": state.get("started") if kernel.busy else state.get("t"),
                "line": state.get("line") if kernel.busy else None,
                "memory": {
                    "counted_bytes": sample[1] if sample else None,
                    "kernel_bytes": sample[2] if sample else None,
                    "limit_bytes": limit.get("limit_bytes"),
                    "limit_source": limit.get("source"),
                    "limit_kind": limit.get("kind"),
                },
                "guard": kernel.meta.get("guard"),
                "ignored_interrupt": _ignored(kernel.session_dir),
            }
        )
    return states


def _ignored(session_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(session_dir, "interrupt.json"), encoding="utf-8") as f:
            look = json.load(f)
    except (OSError, ValueError):
        return None
    from ..diagnosis.hang import describe

    return {"seq": look.get("seq"), "summary": describe(look, interrupt=True)}
