"""Stored reports: finding, listing and reading them, each one validated.

A stored report is read only through ``read_private`` (this user's own regular file,
never through a symlink, never blocking on a FIFO, at most MAX_REPORT bytes) and
``Report.from_json``, and its ``id`` must be its file's name (the id names the file the
server serves and the notice's claim marker). A file that fails any of this is not a
report: listings skip it and tell ``warn`` one line about it, so one bad file never
hides the others or crashes a command, the server or a kernel's start.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

from ..agent.private import printable, read_private
from ..paths import reports_dir
from .model import JSON, BadReport, Report

# A report is a few KiB (a 500-point timeline, an 8000-character stderr tail); a long
# cell's source can make it larger, but not this large.
MAX_REPORT = 16 * 1024**2

Warn = Callable[[str], None]


def report_paths() -> list[str]:
    """Every stored report's path, newest first (the names start with the time)."""
    try:
        directory = reports_dir()
        names = [n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith(".")]
    except OSError:
        return []
    return sorted((os.path.join(directory, n) for n in names), reverse=True)


def report_id(path: str) -> str:
    return os.path.basename(path)[: -len(".json")]


def read_document(path: str) -> tuple[Report, dict[str, JSON]]:
    """The stored report at ``path``, and its JSON as stored (for serving it whole).
    Raises ``BadReport`` when it is not one."""
    data = read_private(path, MAX_REPORT)
    if data is None:
        raise BadReport(
            "",
            "cannot be read: it is gone, larger than 16 MiB, or not this user's own regular file",
        )
    try:
        document = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadReport("", f"not valid JSON ({type(exc).__name__})") from None
    report = Report.from_json(document)
    if report.id != report_id(path):
        raise BadReport("id", "expected the file's name without .json")
    return report, document


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a number JSON allows")


def read_report(path: str) -> Report:
    """The stored report at ``path``; raises ``BadReport`` when it is not one."""
    return read_document(path)[0]


def skipped(path: str, exc: BadReport) -> str:
    """The one line said about a stored file that is not a report."""
    return (
        f"skipped {printable(path)}: {exc} (kernel-doctor cannot read it as a report; "
        "delete the file to stop this warning)"
    )


def warn_stderr(text: str) -> None:
    """The command line's ``warn``: one line on stderr (stdout stays the output)."""
    try:
        sys.stderr.write(f"kernel-doctor: warning: {text}\n")
    except OSError:
        pass


_warned: set[str] = set()


def once(warn: Warn) -> Warn:
    """``warn``, but each line only once in this process: for the server, which lists
    the reports again at every request and poll."""

    def warn_once(text: str) -> None:
        if text not in _warned and len(_warned) < 10_000:
            _warned.add(text)
            warn(text)

    return warn_once


def _read_all(paths: list[str], warn: Warn | None) -> list[Report]:
    out = []
    for path in paths:
        try:
            out.append(read_report(path))
        except BadReport as exc:
            if warn is not None:
                warn(skipped(path, exc))
    return out


def stored_reports(warn: Warn | None = None) -> list[Report]:
    """Every valid stored report, newest first; ``warn`` hears of each file skipped."""
    return _read_all(report_paths(), warn)


def new_stored(seen: set[str], warn: Warn | None = None) -> list[Report]:
    """The valid stored reports whose paths are not in ``seen`` (which they are added
    to, the invalid ones too): for views that refresh, so each file is read (and
    warned about) once, not at every refresh."""
    fresh = [path for path in report_paths() if path not in seen]
    seen.update(fresh)
    return _read_all(fresh, warn)


def latest_report(warn: Warn | None = None) -> Report | None:
    """The newest VALID stored report: a newer file that is not one is skipped (and
    ``warn`` hears of it), so one bad file never hides the last death."""
    for path in report_paths():
        try:
            return read_report(path)
        except BadReport as exc:
            if warn is not None:
                warn(skipped(path, exc))
    return None


def find_report(name: str) -> str | None:
    """The path of the stored report with id ``name``, valid or not."""
    for path in report_paths():
        if report_id(path) == name:
            return path
    return None
