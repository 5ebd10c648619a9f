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

import os
import time

from ..agent.naming import short_paths
from ..agent.private import printable
from ..agent.protocol import VARIABLES_GONE, Meta, write_notice
from ..paths import reports_dir
from ..sizes import format_size
from .history import read_report
from .model import BadReport, Report

# A restart follows its death within seconds; a report older than this belongs to a
# kernel that was restarted by hand much later, which already saw it or never will.
RESTART_WINDOW = 120.0


def claim_marker(directory: str, report_id: str) -> str:
    return os.path.join(directory, f".{report_id}.shown")


def _recent(directory: str, now: float) -> list[str]:
    """The stored reports written within RESTART_WINDOW, newest first."""
    paths = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    for entry in entries:
        if not entry.name.endswith(".json") or entry.name.startswith("."):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= now - RESTART_WINDOW:
                paths.append(entry.path)
        except OSError:
            continue  # pruned meanwhile
    return sorted(paths, reverse=True)


def find_previous(meta: Meta | None, now: float | None = None) -> Report | None:
    """The newest unclaimed report of this notebook's previous kernel, claimed. A file
    that is not a valid report is passed over quietly: this runs as each kernel starts,
    where nothing may stop it (``kernel-doctor reports`` names such files)."""
    if meta is None:
        return None
    connection, name = meta.connection_file, meta.session_name
    if not connection and not name:
        return None
    directory = reports_dir()
    now = time.time() if now is None else now
    for path in _recent(directory, now):
        try:
            report = read_report(path)
        except BadReport:
            continue
        kernel = report.kernel
        if kernel is None:
            continue
        same = (connection and kernel.connection_file == connection) or (
            name and kernel.session_name == name
        )
        if not same or kernel.pid == meta.kernel_pid:
            continue
        try:
            # The id is the file's name (read_report checks it): a plain file name.
            marker = claim_marker(directory, str(report.id))
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(marker, flags, 0o600)
        except FileExistsError:
            continue  # shown already, or being shown by another kernel
        except OSError:
            return None
        os.close(fd)
        return report
    return None


def notice_text(report: Report) -> str:
    """What the user reads at the top of the next cell's output: what happened, what
    to do, where the full report is (control characters escaped: a console frontend
    prints it to a terminal). It ends with a newline, so the cell's own first output
    starts on a line of its own."""
    ended = report.kernel.ended if report.kernel else None
    when = time.strftime(" at %H:%M:%S", time.localtime(ended)) if ended else ""
    lines = [f"kernel-doctor: the previous kernel of this notebook died{when}."]
    lines.append(f"  {short_paths(report.summary)}")
    if report.advice:
        lines.append(f"  What to do: {short_paths(report.advice[0])}")
    memory = report.memory
    if memory.limit_bytes:
        lines.append(
            f"  Memory: peak {format_size(memory.peak_bytes)} of "
            f"{format_size(memory.limit_bytes)} ({short_paths(str(memory.limit_source))})."
        )
    lines.append(VARIABLES_GONE.rstrip("\n"))
    lines.append(
        f"  Full report: %doctor show {report.id}, or `kernel-doctor show {report.id}` "
        "in a terminal."
    )
    return printable("\n".join(lines), newlines=True) + "\n"


def leave_notice(session_dir: str, meta: Meta | None) -> bool:
    """Find the previous death of this notebook and leave its notice for the agent."""
    try:
        report = find_previous(meta)
        if report is None:
            return False
        write_notice(session_dir, notice_text(report))
    except Exception:
        return False  # a kernel's start is worth more than a notice
    return True
