"""How every sentence a person reads names a cell, a place in one, and a long path.

One form, the one JupyterLab shows: a cell that ran is ``In [3]``, its prompt; one
without an execution count is its 1-based position in the notebook, markdown cells
included ("the 4th cell"). A markdown cell on top therefore never shifts what a person
reads, and the JSON keeps the 0-based ``index`` for programs. A stack frame in a cell's
code file (ipykernel's ``/tmp/ipykernel_<pid>/<hash>.py``, IPython's
``<ipython-input-3-hash>``) is named by its cell, "In [3], line 3", never by the temp
file, which no one can open.

Standard library only: the agent (``%doctor``) uses it inside the kernel too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .records import CellRecord

# ipykernel names each cell's code /tmp/ipykernel_<pid>/<hash>.py; plain IPython
# <ipython-input-N-hash>, N being the execution count.
CELL_FILE = re.compile(r"(/ipykernel_\d+/\d+\.py$)|(^<ipython-input-(\d+)-[0-9a-f]+>$)")
RUNNING = "the running cell"
# A path longer than this is shortened in human text ("/sys/fs/cgroup/…/kd-1-0").
LONG_PATH = 40
_PATH = re.compile(r"(?<![\w/.~:-])/[^\s()'\"]+")


def is_cell_file(path: str) -> bool:
    return bool(CELL_FILE.search(path))


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, …"""
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def cell_name(count: int | None, index: int | None = None, unknown: str = RUNNING) -> str:
    """``In [3]`` for execution count 3; else "the 4th cell" for 0-based ``index`` 3;
    else ``unknown``."""
    if count is not None:
        return f"In [{count}]"
    if index is not None:
        return f"the {ordinal(index + 1)} cell"
    return unknown


def cell_place(
    count: int | None,
    index: int | None = None,
    line: int | None = None,
    unknown: str = RUNNING,
    *,
    short: bool = False,
) -> str:
    """A cell and, where known, the line in it: "In [3], line 2" (``short``, for a
    table's narrow column: "In [3]:2")."""
    name = cell_name(count, index, unknown)
    if not line:
        return name
    return f"{name}:{line}" if short else f"{name}, line {line}"


def capital(text: str) -> str:
    """``text`` as the start of a sentence ("the 4th cell" → "The 4th cell")."""
    return text[:1].upper() + text[1:]


def frame_place(
    file: str, line: int | None, count: int | None = None, index: int | None = None
) -> str:
    """Where a stack frame is, for a person: its cell and line for a cell's code
    ("In [3], line 3"; "a cell, line 3" when which one is not known), else the file,
    shortened ("numpy/core/fromnumeric.py, line 41")."""
    match = CELL_FILE.search(file)
    if count is None and match and match.group(3):
        count = int(match.group(3))  # IPython's own name carries it
    if match or count is not None or index is not None:
        return cell_place(count, index, line, unknown="a cell")
    where = short_file(file)
    return f"{where}, line {line}" if line else where


def cell_files(records: Iterable[CellRecord]) -> dict[str, int]:
    """Each cell's code file → its execution count, from the agent's flight record
    (a cell's start record has its count, its end record the file it ran as)."""
    counts: dict[int | None, int | None] = {}
    files: dict[str, int] = {}
    for record in records:
        if record.event == "start":
            counts[record.seq] = record.execution_count
        elif record.event == "end" and record.file:
            count = counts.get(record.seq)
            if count is not None:
                files[record.file] = count
    return files


def short_file(path: str) -> str:
    """A source file as a person knows it: an installed package's path from the
    package on ("numpy/core/fromnumeric.py"), else the path, its middle cut if long."""
    for marker in ("site-packages/", "dist-packages/", "/lib/python3"):
        index = path.find(marker)
        if index >= 0:
            return path[index + len(marker) :].lstrip("0123456789./")
    return short_path(path)


def short_path(path: str) -> str:
    """A long absolute path with its middle cut: "/sys/fs/cgroup/…/kernel-doctor-1-0"."""
    if len(path) <= LONG_PATH or not path.startswith("/"):
        return path
    parts = path.split("/")
    if len(parts) <= 5:
        return path
    return "/".join([*parts[:4], "…", parts[-1]])


def short_paths(text: str) -> str:
    """``text`` with every long absolute path in it shortened (``short_path``); the
    full ones are in the JSON, ``--verbose`` and the lab extension's Details."""

    def shorten(match: re.Match[str]) -> str:
        path = match.group(0)
        trail = len(path) - len(path.rstrip(".,;:"))
        body = path[: len(path) - trail] if trail else path
        return short_path(body) + path[len(body) :]

    return _PATH.sub(shorten, text)


__all__ = [
    "CELL_FILE",
    "capital",
    "cell_files",
    "cell_name",
    "cell_place",
    "frame_place",
    "is_cell_file",
    "ordinal",
    "short_file",
    "short_path",
    "short_paths",
]
