"""Every thread's Python stack, taken inside the kernel for ``kernel-doctor where``.

The watcher thread answers while a cell runs (it polls for the supervisor's request
every tick). It takes the stacks with ``sys._current_frames()`` under the GIL, which
is safe where faulthandler's all-threads dump from a signal is not, and it has the
source lines (IPython registers each cell's source in ``linecache``). When the cell's
thread holds the GIL in a long C call the watcher cannot run: the supervisor then has
faulthandler's dump of the main thread alone. Standard library only.
"""

from __future__ import annotations

import json
import linecache
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .hooks import wrap_shell
from .protocol import REQUEST, AgentAnswer, Frame, PyThread, read_request, write_answer

MAX_FRAMES = 60  # innermost frames listed per thread; deeper ones are counted
MAX_DEPTH = 10_000_000  # a runaway recursion is counted this far, no further


def thread_stacks(main_ident: int | None) -> list[PyThread]:
    """The main thread first; frames innermost last, as tracebacks print them."""
    names = {t.ident: t.name for t in threading.enumerate()}
    natives = {t.ident: getattr(t, "native_id", None) for t in threading.enumerate()}
    own = threading.get_ident()
    stacks = []
    for ident, frame in sys._current_frames().items():
        if ident == own:
            continue  # the watcher itself
        frames, depth = _frames(frame)
        stacks.append(
            PyThread(
                ident=ident,
                native_id=natives.get(ident),
                name=names.get(ident) or f"Thread {ident:#x}",
                main=ident == main_ident,
                depth=depth,
                frames=frames,
            )
        )
    stacks.sort(key=lambda s: not s["main"])
    return stacks


def _frames(frame: FrameType | None) -> tuple[list[Frame], int]:
    innermost: list[Frame] = []
    depth = 0
    while frame is not None and depth < MAX_DEPTH:
        if depth < MAX_FRAMES:
            code = frame.f_code
            line = frame.f_lineno or 0
            source = linecache.getline(code.co_filename, line).strip()
            innermost.append([code.co_filename, line, code.co_name, source])
        depth += 1
        frame = frame.f_back
    innermost.reverse()
    return innermost, depth


def answer(session_dir: str, main_ident: int | None) -> bool:
    """Answer a pending request, if there is one; True when it did."""
    nonce = read_request(session_dir)
    if not nonce:
        return False
    try:
        write_answer(session_dir, AgentAnswer(nonce=nonce, threads=thread_stacks(main_ident)))
        os.unlink(os.path.join(session_dir, REQUEST))
    except OSError:
        return False
    return True


def note_tracebacks(agent: Any) -> Callable[[], None]:
    """Mark the state record while IPython formats a cell's traceback, which can take
    minutes (a RecursionError a million frames deep) and looks like a hang. Returns
    the undoing."""

    def make(original: Any, active: Callable[[], bool]) -> Any:
        def showtraceback(*args: Any, **kwargs: Any) -> Any:
            if active():
                note_phase(agent)
            try:
                return original(*args, **kwargs)
            finally:
                agent._phase_json = ""

        return showtraceback

    return wrap_shell(agent.shell, "showtraceback", make)


def note_phase(agent: Any) -> None:
    try:
        error = sys.exc_info()[1]
        depth = 0
        tb = error.__traceback__ if error is not None else None
        while tb is not None and depth < 10_000_000:
            depth, tb = depth + 1, tb.tb_next
        phase = {
            "phase": "traceback",
            "error": type(error).__name__ if error is not None else None,
            "depth": depth,
        }
        agent._phase_json = "," + json.dumps(phase)[1:-1]
        with agent._lock:
            agent._write_json()
    except Exception:
        pass
