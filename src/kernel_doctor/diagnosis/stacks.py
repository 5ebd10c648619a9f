"""Reading faulthandler's dumps, and finding the cell and line in a stack."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from ..agent.naming import is_cell_file
from ..evidence import CellRun, Frame, StackDump

_THREAD = re.compile(
    r"^(Current thread|Thread) (0x[0-9a-f]+)(?: \[.*?\])? \(most recent call first\):"
)
_STACK = re.compile(r"^Stack \(most recent call first\):")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')
_FATAL = re.compile(r"^Fatal Python error: (.*)$")
TIMED_EXEC = "<timed exec>"


def parse_faulthandler(text: str) -> list[StackDump]:
    """Every thread's stack in faulthandler output, frames innermost last."""
    dumps: list[StackDump] = []
    fatal: str | None = None
    thread: str | None = None
    current = False
    frames: list[Frame] = []
    truncated = False

    def flush() -> None:
        if thread is not None:
            dumps.append(StackDump(thread, tuple(reversed(frames)), truncated, fatal, current))

    for line in text.splitlines():
        match = _FATAL.match(line)
        if match:
            flush()
            thread, frames, truncated, fatal = None, [], False, match.group(1).strip()
            continue
        match = _THREAD.match(line)
        if match or _STACK.match(line):
            flush()
            frames, truncated = [], False
            current = bool(match and match.group(1) == "Current thread") or not match
            thread = match.group(2) if match else "0x0"
            continue
        if thread is None:
            continue
        match = _FRAME.match(line)
        if match:
            frames.append(Frame(match.group(1), int(match.group(2)), match.group(3).strip()))
        elif line.strip() == "...":
            truncated = True
    flush()
    return dumps


def pick_thread(threads: Sequence[StackDump], main: str | None) -> StackDump | None:
    """The main thread's stack (where cells run), else the thread the signal hit."""
    for dump in threads:
        if main is not None and int(dump.thread, 16) == int(main, 16):
            return dump
    for dump in threads:
        if dump.current:
            return dump
    return threads[-1] if threads else None


def user_frames(stack: tuple[Frame, ...]) -> tuple[Frame, ...]:
    """The stack from the outermost cell frame inwards: the kernel's own machinery
    above it (ipykernel, IPython, asyncio) says nothing about the death."""
    for i, frame in enumerate(stack):
        if is_cell_file(frame.file):
            return stack[i:]
    return stack


def cell_line(
    frames: Sequence[Frame],
    running: CellRun | None,
    earlier: Sequence[CellRun],
    *,
    truncated: bool = False,
) -> int | None:
    """The running cell's line in ``frames`` (a StackDump's: outermost first), if there.

    In a truncated dump (faulthandler keeps the 100 innermost frames) the outermost
    frame of the cell's file may be a function the cell defined, deep in a
    recursion, not the cell's own statement: only a '<module>' frame counts then."""
    earlier_files = {c.file for c in earlier if c.file and c is not running}
    for i, frame in enumerate(frames):
        if running is not None and running.file:
            ours = frame.file == running.file
        else:
            ours = is_cell_file(frame.file) and frame.file not in earlier_files
        if ours and (not truncated or frame.function == "<module>"):
            # A %%time body runs as '<timed exec>' from the line after the magic's.
            timed = next((f for f in frames[i + 1 :] if f.file == TIMED_EXEC), None)
            return timed.line + 1 if timed else frame.line
    return None


def runaway_recursion(dump: StackDump) -> tuple[str, int] | None:
    """(function, share of frames) when most frames are one recursing function."""
    if len(dump.frames) < 50:
        return None
    counts = Counter((f.file, f.function) for f in dump.frames)
    (_, function), count = counts.most_common(1)[0]
    if count >= len(dump.frames) // 2:
        return function, count
    return None
