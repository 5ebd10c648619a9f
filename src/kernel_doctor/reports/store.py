"""Writing reports: atomically, mode 0600, under the Jupyter runtime dir."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

from ..diagnosis import Diagnosis
from ..evidence import Evidence
from .model import death_report

REPORT_FILE = "report.json"
# Stored reports are named "<YYYYmmdd-HHMMSS>-<kernel pid>.json": newest sorts last.
REPORT_NAME = re.compile(r"^\d{8}-\d{6}-\d+\.json$")
KEEP_REPORTS = 200
KEEP_DAYS = 30


def reports_dir() -> str:
    from ..supervisor.session import REPORTS, runtime_dir

    return os.path.join(runtime_dir(create=False), REPORTS)


def write_json(path: str, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically with mode 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".report-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(document, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _setting(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    return int(text) if text.isdigit() else default


def prune(directory: str, now: float | None = None) -> list[str]:
    """Remove reports beyond the newest KERNEL_DOCTOR_KEEP_REPORTS (default 200) and
    those older than KERNEL_DOCTOR_KEEP_DAYS (default 30); returns what went."""
    keep = _setting("KERNEL_DOCTOR_KEEP_REPORTS", KEEP_REPORTS)
    days = _setting("KERNEL_DOCTOR_KEEP_DAYS", KEEP_DAYS)
    now = time.time() if now is None else now
    try:
        names = sorted((n for n in os.listdir(directory) if REPORT_NAME.match(n)), reverse=True)
    except OSError:
        return []
    removed = []
    for i, name in enumerate(names):
        path = os.path.join(directory, name)
        try:
            old = now - os.stat(path).st_mtime > days * 86400
        except OSError:
            continue
        if i >= keep or old:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, f".{name[: -len('.json')]}.shown"))
    return removed


def publish(
    ev: Evidence, dx: Diagnosis, session_dir: str, extra_path: str | None, *, quiet: bool = False
) -> str | None:
    """Store the report and tell stderr. Returns the stored path (None if unwritable)."""
    report_id = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(ev.ended))}-{ev.pid}"
    document = death_report(ev, dx, report_id)
    problems = []
    for path in (os.path.join(session_dir, REPORT_FILE), extra_path):
        if path:
            try:
                write_json(path, document)
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
    stored: str | None = os.path.join(reports_dir(), f"{report_id}.json")
    try:
        write_json(str(stored), document)
    except OSError as exc:
        problems.append(f"{stored}: {exc.strerror or exc}")
        stored = None
    else:
        prune(os.path.dirname(str(stored)))
    lines = [] if quiet else [f"kernel-doctor: {dx.summary}"]
    if not quiet:
        lines += [f"kernel-doctor:   {fact}" for fact in dx.evidence[:6]]
        lines += [f"kernel-doctor: advice: {tip}" for tip in dx.advice[:2]]
    if stored and not quiet:
        lines.append(f"kernel-doctor: full report: kernel-doctor show {report_id}")
    for problem in problems:
        lines.append(f"kernel-doctor: warning: could not write the report to {problem}")
    try:
        if lines:
            sys.stderr.write("\n".join(lines) + "\n")
            sys.stderr.flush()
    except OSError:
        pass
    return stored
