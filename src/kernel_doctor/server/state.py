"""What the server extension serves, read from disk: stored reports this user may read,
and the live state of supervised kernels (without asking their supervisors)."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from ..agent.protocol import INTERRUPT, last_sample, read_look, started_cell
from ..live import live_kernels

# jupyter_server names a kernel's connection file kernel-<kernel id>.json.
_KERNEL_FILE = re.compile(r"^kernel-([0-9a-fA-F-]+)\.json$")


def kernel_id_of(connection_file: str | None) -> str | None:
    match = _KERNEL_FILE.match(os.path.basename(connection_file or ""))
    return match.group(1) if match else None


def kernel_states(kernel_ids: set[str]) -> list[dict[str, Any]]:
    """Supervised kernels among ``kernel_ids`` (this server's), as the frontend and the
    metrics need them: running cell and line, memory against the limit, guard."""
    states = []
    for kernel in live_kernels():
        kernel_id = kernel_id_of(kernel.meta.connection_file)
        if kernel_id is None or kernel_id not in kernel_ids:
            continue
        sample = last_sample(kernel.session_dir)
        limit = kernel.meta.limit
        state = kernel.state
        running = started_cell(kernel.session_dir, state.seq) if kernel.busy else None
        states.append(
            {
                "kernel_id": kernel_id,
                "session_dir": kernel.session_dir,
                "pid": kernel.kernel_pid,
                "notebook": kernel.meta.session_name,
                "busy": kernel.busy,
                "since": state.started if kernel.busy else state.t,
                "line": state.line if kernel.busy else None,
                # The running cell, for a frontend to find and name it; the seconds it
                # has run by the server's clock (the browser's may differ).
                "execution_count": running.execution_count if running else None,
                "cell_id": running.cell_id if running else None,
                "elapsed": _elapsed(state.started) if kernel.busy else None,
                "memory": {
                    "counted_bytes": sample.counted if sample else None,
                    "kernel_bytes": sample.kernel_rss if sample else None,
                    "limit_bytes": limit.limit_bytes if limit else None,
                    "limit_source": limit.source if limit else None,
                    "limit_kind": limit.kind if limit else None,
                },
                "guard": kernel.meta.guard.to_json() if kernel.meta.guard else None,
                "ignored_interrupt": _ignored(kernel.session_dir),
                "child_deaths": _child_deaths(kernel.session_dir),
            }
        )
    return states


def _elapsed(started: float | None) -> float | None:
    return None if started is None else round(max(0.0, time.time() - started), 1)


def _ignored(session_dir: str) -> dict[str, Any] | None:
    look = read_look(os.path.join(session_dir, INTERRUPT))
    if look is None:
        return None
    from ..diagnosis.hang import describe

    return {"seq": look.get("seq"), "summary": describe(look, interrupt=True)}


def _child_deaths(session_dir: str) -> list[dict[str, Any]]:
    """The kernel's children that died while it lived (the last few), each with the
    note its cell was given, for a frontend to notify once."""
    from ..agent.children import note, read_child_deaths, read_roles, role

    deaths = read_child_deaths(session_dir)[0][-5:]
    if not deaths:
        return []
    roles = read_roles(session_dir)
    return [
        {
            "pid": d.pid,
            "t": d.t,
            "cause": d.cause,
            "summary": note(d, roles.get(d.pid) or role(d, None)).split("\n")[0],
        }
        for d in deaths
    ]
