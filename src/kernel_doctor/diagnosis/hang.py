"""What a busy kernel is really doing, in one sentence, from a look at it (the
supervisor's ``where`` reply: see ``kernel_doctor.supervisor.inspect``)."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from ..agent.naming import cell_name, cell_place, frame_place, is_cell_file
from ..agent.protocol import Look

_PACKAGE = re.compile(r"[/\\](?:site|dist)-packages[/\\]([^/\\]+)")


def main_frames(reply: Look) -> list[list[Any]]:
    """The main thread's frames, innermost last: the agent's (with source lines) when
    it could answer, else faulthandler's."""
    for thread in reply.get("python") or []:
        if thread.get("main"):
            return list(thread.get("frames") or [])
    return list(reply.get("main_dump") or [])


def where_in_code(reply: Look) -> str:
    """ "in psycopg2 (execute, line 12) at In [4], line 2" and the like."""
    frames = main_frames(reply)
    cell = reply.get("cell")
    count = cell["execution_count"] if cell else None
    line = reply.get("line")
    at = cell_place(count, None, line) if count is not None and line else ""
    if not frames:
        return f"at {at}" if at else ""
    inner = frames[-1]
    if is_cell_file(str(inner[0])):
        line_in = inner[1] if isinstance(inner[1], int) else None
        return f"at {at}" if at else f"at {frame_place(str(inner[0]), line_in)}"
    match = _PACKAGE.search(str(inner[0]))
    package = match.group(1) if match else os.path.splitext(os.path.basename(str(inner[0])))[0]
    place = f"in {package} ({inner[2]}, line {inner[1]})"
    return f"{place} at {at}" if at else place


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(reply: Look, interrupt: bool = False) -> str:
    """The sentence ``where``, ``top``, the logs and the timeout report all use."""
    if not reply.get("busy"):
        return "idle: no cell is running"
    cell = reply.get("cell")
    count = cell["execution_count"] if cell else None
    started = reply.get("started")
    ran = duration(time.time() - started) if isinstance(started, (int, float)) else "?"
    name = cell_name(count)
    phase = reply.get("phase")
    if phase and phase["phase"] == "traceback":
        depth = phase["depth"] or 0
        return (
            f"{name} raised {phase['error']} ({depth:,} frames deep) and IPython is "
            "formatting its traceback: the kernel is not hung, but a traceback this deep "
            "takes minutes. Wait, or restart the kernel; a lower sys.setrecursionlimit "
            "keeps such tracebacks short."
        )
    verdict = str(reply.get("verdict") or "busy")
    if verdict == "burning CPU" and reply.get("python") is None and reply.get("main_dump"):
        # The watcher thread could not run in WAIT: the main thread held the GIL.
        verdict = "burning CPU in a C call that holds the GIL"
    place = where_in_code(reply)
    if interrupt:
        frames = main_frames(reply)
        code = source_line(reply, frames[-1]) if frames else ""
        return (
            f"an interrupt did not stop {name} within "
            f"{duration(float(reply.get('ignored_for') or 0))}: the kernel is inside a C call "
            "that does not check for "
            f"interrupts ({reply.get('verdict') or 'busy'!s}) {place}"
            + (f": {code}" if code else "")
            + ". Only a restart will stop it."
        )
    return f"{name} has run for {ran}, {verdict} {place}".rstrip() + "."


def source_line(reply: Look, frame: list[Any]) -> str:
    """The source of ``frame``: the agent's, else the running cell's own text."""
    if len(frame) > 3 and frame[3]:
        return str(frame[3])
    cell = reply.get("cell")
    if cell and is_cell_file(str(frame[0])) and str(frame[0]) == reply.get("file"):
        lines = (cell["source"] or "").splitlines()
        number = int(frame[1])
        if 0 < number <= len(lines):
            return lines[number - 1].strip()
    return ""
