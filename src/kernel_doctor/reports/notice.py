"""The previous kernel's death, shown once in the next cell of the same notebook.

When a frontend restarts a dead kernel, the new kernel's supervisor looks for a
report written moments ago for the same notebook and leaves its text in the new
session, where the agent shows it at the top of the next cell's output. Same
notebook means the same connection file (jupyter_server keeps it across restarts)
or the same ``JPY_SESSION_NAME`` (the notebook's path, which jupyter_server and
recent VS Code set); without either there is no telling, and nothing is shown.
Each report is claimed once, so it never shows twice or in another notebook.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

from ..agent.layout import NOTICE
from ..sizes import format_size
from .store import reports_dir

# A restart follows its death within seconds; a report older than this belongs to a
# kernel that was restarted by hand much later, which already saw it or never will.
RESTART_WINDOW = 120.0


def claim_marker(directory: str, report_id: str) -> str:
    return os.path.join(directory, f".{report_id}.shown")


def find_previous(meta: dict[str, Any], now: float | None = None) -> dict[str, Any] | None:
    """The newest unclaimed report of this notebook's previous kernel, claimed."""
    connection, name = meta.get("connection_file"), meta.get("session_name")
    if not connection and not name:
        return None
    directory = reports_dir()
    now = time.time() if now is None else now
    try:
        entries = [
            e
            for e in os.scandir(directory)
            if e.name.endswith(".json")
            and not e.name.startswith(".")
            and e.stat().st_mtime >= now - RESTART_WINDOW
        ]
    except OSError:
        return None
    for entry in sorted(entries, key=lambda e: e.name, reverse=True):
        try:
            with open(entry.path, encoding="utf-8") as f:
                report = json.load(f)
        except (OSError, ValueError):
            continue
        kernel = report.get("kernel") or {}
        same = (connection and kernel.get("connection_file") == connection) or (
            name and kernel.get("session_name") == name
        )
        if not same or kernel.get("pid") == meta.get("kernel_pid"):
            continue
        try:
            marker = claim_marker(directory, str(report.get("id")))
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue  # shown already, or being shown by another kernel
        except OSError:
            return None
        os.close(fd)
        return dict(report)
    return None


def notice_text(report: dict[str, Any]) -> str:
    """What the user reads at the top of the next cell's output."""
    ended = (report.get("kernel") or {}).get("ended")
    when = time.strftime(" at %H:%M:%S", time.localtime(ended)) if ended else ""
    lines = [f"kernel-doctor: the previous kernel of this notebook died{when}."]
    lines.append(f"  {report.get('summary')}")
    memory = report.get("memory") or {}
    if memory.get("limit_bytes"):
        lines.append(
            f"  Memory: peak {format_size(memory.get('peak_bytes'))} of "
            f"{format_size(memory['limit_bytes'])} ({memory.get('limit_source')})."
        )
    advice = report.get("advice") or []
    if advice:
        lines.append(f"  Advice: {advice[0]}")
    lines.append("  Its variables are gone: this is a new kernel, started afresh.")
    lines.append(
        f"  Full report: %doctor deaths, or `kernel-doctor show {report.get('id')}` in a terminal."
    )
    return "\n".join(lines)


def leave_notice(session_dir: str, meta: dict[str, Any]) -> bool:
    """Find the previous death of this notebook and leave its notice for the agent."""
    report = find_previous(meta)
    if report is None:
        return False
    path = os.path.join(session_dir, NOTICE)
    with contextlib.suppress(OSError):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"id": report.get("id"), "text": notice_text(report)}, f)
        os.replace(path + ".tmp", path)
        return True
    return False
