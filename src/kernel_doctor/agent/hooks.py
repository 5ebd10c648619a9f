"""The agent's hooks into IPython and the supervisor: a statement's start, and the
supervisor's wake-up pipes, taken from the environment."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from types import CodeType
from typing import Any

from .protocol import ENV_WAKE_FD, ENV_WATCH_FD


def take_wake_fd() -> int | None:
    """The supervisor's wake-up pipe (write end), if this kernel was given one."""
    return _take_pipe(ENV_WAKE_FD)


def take_watch_fd() -> int | None:
    """The pipe (read end) on which the supervisor wakes the watcher thread."""
    return _take_pipe(ENV_WATCH_FD)


def _take_pipe(variable: str) -> int | None:
    """The pipe whose descriptor ``variable`` names. The variable is removed so that no
    process started from this kernel uses whatever has that number there; the pipe
    must really be a pipe, and never blocks or leaks."""
    text = os.environ.pop(variable, "")
    if not text.isdigit():
        return None
    fd = int(text)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return None
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
    except OSError:
        return None
    return fd


def wrap_shell(
    shell: Any, name: str, make: Callable[[Any, Callable[[], bool]], Any]
) -> Callable[[], None]:
    """Replace the shell's method ``name`` for this shell alone with
    ``make(original, active)``; returns the undoing. Once undone, ``active()`` is
    False: another extension may have wrapped ours since, and its wrapper still calls
    ours, which must then only pass the call on."""
    original = getattr(shell, name)
    active = [True]
    wrapper = make(original, lambda: active[0])
    setattr(shell, name, wrapper)

    def undo() -> None:
        active[0] = False
        if vars(shell).get(name) is wrapper:
            delattr(shell, name)

    return undo


def wrap_run_code(shell: Any, agent: Any) -> Callable[[], None]:
    """Note each top-level statement of a cell as IPython starts it: ``run_code`` is
    called once a statement, with its code. Returns the undoing.

    It used to be an exec audit hook, which Python calls for every audited event of
    the process (about 30 a trivial cell, ~0.3 µs each, hot, and every ``open`` or
    ``sys._getframe`` of the user's code too) and which can never be removed."""

    def make(original: Any, active: Callable[[], bool]) -> Any:
        async def run_code(code_obj: Any, *args: Any, **kwargs: Any) -> Any:
            if type(code_obj) is CodeType and active():
                try:
                    agent.statement_started(code_obj)
                except Exception:
                    pass
            return await original(code_obj, *args, **kwargs)

        return run_code

    return wrap_shell(shell, "run_code", make)


def ipython_major() -> int:
    try:
        import IPython

        return int(str(IPython.__version__).split(".")[0])
    except (ImportError, ValueError):
        return 0
