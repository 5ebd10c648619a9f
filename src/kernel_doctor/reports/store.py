"""Writing reports: the stored ones privately, the one a user asked for where asked.

Stored reports go to ``<data dir>/kernel-doctor/reports/<id>.json``: a private
folder (0700, this user's, checked), each file written whole at once (``write_atomic``:
a 0600 temp file renamed over it), so kernels dying at the same moment never tear or
lose one. A report the user asked for (``run --report-json PATH``, the supervisor's
``report`` option) goes where they said: see ``write_json``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import sys
import time
from collections.abc import Mapping
from typing import Any

from .._errors import UsageError
from ..agent.private import printable, write_atomic
from ..diagnosis import Diagnosis
from ..evidence import Evidence
from ..paths import reports_dir
from .model import Report, death_report

__all__ = ["REPORT_FILE", "ReportNotWritten", "prune", "publish", "reports_dir", "write_json"]

REPORT_FILE = "report.json"
# Stored reports are named "<YYYYmmdd-HHMMSS>-<kernel pid>.json": newest sorts last.
REPORT_NAME = re.compile(r"^\d{8}-\d{6}-\d+\.json$")
KEEP_REPORTS = 200
KEEP_DAYS = 30


class ReportNotWritten(UsageError):
    """The report could not be written where the user asked (exit 2, one line)."""

    def __init__(self, path: str, why: str) -> None:
        self.path, self.why = path, why
        super().__init__(
            f"cannot write the report to {printable(path)!r}: {why}; give another path for it"
        )


def encode(document: Report | Mapping[str, Any]) -> bytes:
    doc = document.to_json() if isinstance(document, Report) else document
    return json.dumps(doc, indent=1).encode() + b"\n"


def write_json(path: str, document: Report | Mapping[str, Any]) -> None:
    """Write a report to a path the user chose.

    - A name of one of this process's open descriptors (``/dev/stdout``,
      ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``) is written to that
      descriptor: after what was printed before, before what is printed after, even
      where stdout is a file the shell opened (replacing that file would leave the
      rest of the output in a file no longer there).
    - A symlink is followed: its target is written (``os.path.realpath``), as any
      program writing to a path would.
    - A regular file, or nothing, is replaced at once: a temp file next to the target,
      renamed over it. An existing file of this user's keeps its permission bits; a
      new one (or another user's, replaced) is made 0600, as stored reports are.
    - Anything else there (a terminal, a FIFO another program reads, ``/dev/full``)
      is written into, never replaced: opened for writing without O_CREAT or O_TRUNC.

    Raises ``ReportNotWritten`` (a ``UsageError``: one line, exit 2) with the reason."""
    data = encode(document)
    fd = _open_descriptor(path)
    if fd is not None:
        try:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()  # what Python printed before comes first
            _write_all(fd, data)
        except OSError as exc:
            raise ReportNotWritten(path, exc.strerror or str(exc)) from None
        return
    # Resolved once: what is looked at below is what is written (a path that another
    # user can swap between a file and a symlink must not make us check one file and
    # replace, or take the mode of, another).
    target = os.path.realpath(path)
    try:
        info: os.stat_result | None = os.lstat(target)
    except FileNotFoundError:
        info = None  # nothing there (yet): made below
    except OSError as exc:
        raise ReportNotWritten(path, exc.strerror or str(exc)) from None
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise ReportNotWritten(path, "it is a directory")
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise ReportNotWritten(path, "it changed while being written; try again")
    try:
        if info is not None and not stat.S_ISREG(info.st_mode):
            _write_into(target, data, info)
        else:
            _replace(target, data, info)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.ENXIO and info is not None and stat.S_ISFIFO(info.st_mode):
            why = "no program is reading that FIFO; start its reader first"  # O_NONBLOCK
        raise ReportNotWritten(path, why) from None


# The names of a process's own open descriptors: /dev/stdout -> /proc/self/fd/1 etc.
_DESCRIPTOR = re.compile(r"/dev/(stdout|stderr|fd/(\d+))|/proc/(self|\d+)/fd/(\d+)")


def _open_descriptor(path: str) -> int | None:
    """The descriptor of this process that ``path`` names, if it names one."""
    match = _DESCRIPTOR.fullmatch(os.path.abspath(path))
    if match is None:
        return None
    name, fd, pid, proc_fd = match.groups()
    if name == "stdout":
        return 1
    if name == "stderr":
        return 2
    if fd is not None:
        return int(fd)
    if pid in ("self", str(os.getpid())):
        return int(proc_fd)
    return None  # another process's: an ordinary path


def _write_into(path: str, data: bytes, seen: os.stat_result) -> None:
    """Write ``data`` into the device or FIFO at ``path`` (which was ``seen``). Opened
    O_NONBLOCK so a FIFO with no reader fails at once (ENXIO) instead of hanging the
    run; blocking again once open, so a slow reader is waited for, not cut short."""
    flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino, now.st_rdev) != (seen.st_dev, seen.st_ino, seen.st_rdev):
            # Not what was looked at: swapped since (a device another user pointed at).
            raise OSError(errno.EAGAIN, "it changed while being written; try again")
        os.set_blocking(fd, True)
        _write_all(fd, data)
    finally:
        os.close(fd)


def _replace(target: str, data: bytes, old: os.stat_result | None) -> None:
    """``target`` replaced by a file of ``data``, made under a name no one else can
    have made first (O_EXCL, no symlink followed) and renamed over it."""
    directory, name = os.path.split(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(100):
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name next to it", target)
    try:
        try:
            if old is not None and old.st_uid == os.geteuid():
                # The user's own file keeps its permissions. Another user's gets ours
                # (0600): its owner and mode are never copied, so a file swapped in
                # by someone else cannot lend them to whatever is written.
                os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o777)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the stored reports ---------------------------------------------------------------

_warned: set[str] = set()


def _setting(name: str, default: int, unit: str) -> int:
    """A whole number of at least 0 from the environment; unset or empty gives the
    default, and anything else ("abc", "-3", "1.5") the default with a warning, once
    per process."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if re.fullmatch(r"[0-9]+", text):
        return int(text)
    if name not in _warned:
        _warned.add(name)
        with contextlib.suppress(OSError):
            sys.stderr.write(
                f"kernel-doctor: warning: {name}={printable(text)!r} is not a whole number "
                f"(0 or more); using the default, {default} {unit}\n"
            )
    return default


def prune(directory: str, now: float | None = None, keep: str | None = None) -> list[str]:
    """Remove stored reports beyond the newest KERNEL_DOCTOR_KEEP_REPORTS (default 200)
    and those older than KERNEL_DOCTOR_KEEP_DAYS days (default 30); returns what went.

    ``keep``, the report just written, is never removed: 0 for either setting means
    "keep no history", the newest report alone, so the next cell's notice and
    ``kernel-doctor show latest`` still have the death that just happened."""
    count = _setting("KERNEL_DOCTOR_KEEP_REPORTS", KEEP_REPORTS, "reports")
    days = _setting("KERNEL_DOCTOR_KEEP_DAYS", KEEP_DAYS, "days")
    now = time.time() if now is None else now
    kept = os.path.basename(keep) if keep else None
    try:
        names = sorted((n for n in os.listdir(directory) if REPORT_NAME.match(n)), reverse=True)
    except OSError:
        return []
    removed = []
    for i, name in enumerate(names):
        if name == kept:
            continue
        path = os.path.join(directory, name)
        try:
            old = now - os.lstat(path).st_mtime > days * 86400
        except OSError:
            continue
        if i >= count or old:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, f".{name[: -len('.json')]}.shown"))
    return removed


def store(report: Report) -> str:
    """Store ``report`` (it has an id) in the private reports folder, then prune the
    folder; returns its path. Raises ``OSError`` when the folder cannot be made, is
    not private (the message names it), or cannot be written."""
    if report.id is None or not REPORT_NAME.match(f"{report.id}.json"):
        raise ValueError(
            f"a stored report needs an id like 20261125-140312-4242, not {report.id!r}"
        )
    directory = reports_dir(create=True)
    path = os.path.join(directory, f"{report.id}.json")
    write_atomic(path, encode(report))
    prune(directory, keep=path)
    return path


def publish(
    ev: Evidence, dx: Diagnosis, session_dir: str, extra_path: str | None, *, quiet: bool = False
) -> str | None:
    """Store the report and tell stderr. Returns the stored path (None if unwritable)."""
    report_id = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(ev.ended))}-{ev.pid}"
    report = death_report(ev, dx, report_id)
    problems = []
    session_file = os.path.join(session_dir, REPORT_FILE)
    try:
        write_atomic(session_file, encode(report))  # the session folder is private
    except OSError as exc:
        problems.append(f"{session_file}: {exc.strerror or exc}")
    if extra_path:
        try:
            write_json(extra_path, report)
        except ReportNotWritten as exc:
            problems.append(f"{printable(exc.path)}: {exc.why}")
    stored: str | None
    try:
        stored = store(report)
    except OSError as exc:
        where = os.path.join(reports_dir(), f"{report_id}.json")
        problems.append(f"{where}: {exc.strerror or exc}")
        stored = None
    lines = [] if quiet else [f"kernel-doctor: {dx.summary}"]
    if not quiet:  # what happened and what to do first, then the evidence
        lines += [f"kernel-doctor: what to do: {tip}" for tip in dx.advice[:2]]
        lines += [f"kernel-doctor:   evidence: {fact}" for fact in dx.evidence[:6]]
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
