"""The agent's hooks into the interpreter: the exec audit hook (one per process) and
the supervisor's wake-up pipe, taken from the environment."""

from __future__ import annotations

import os
import stat
import sys
from types import CodeType
from typing import Any

from .protocol import ENV_WAKE_FD, ENV_WATCH_FD

_audit_target: Any = None
_audit_installed = False


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


def install_audit_hook(agent: Any) -> None:
    """Route exec events to ``agent`` (None: to nobody)."""
    # Audit hooks cannot be removed, so one hook serves every agent this process
    # loads; it returns at once for every event but "exec".
    global _audit_target, _audit_installed
    _audit_target = agent
    if _audit_installed or agent is None:
        return
    _audit_installed = True

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "exec" and _audit_target is not None and type(args[0]) is CodeType:
            try:
                _audit_target.statement_started(args[0])
            except Exception:
                pass

    sys.addaudithook(hook)


def ipython_major() -> int:
    try:
        import IPython

        return int(str(IPython.__version__).split(".")[0])
    except (ImportError, ValueError):
        return 0
