"""The session's control FIFO, through which ``kernel-doctor where`` asks for a look.

Kept light: the supervisor opens the FIFO at every kernel start, and builds the
``Inspector`` (``inspect.py``, which imports more) only when a look is first needed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..agent.private import make_fifo, open_fifo
from ..agent.protocol import CONTROL

if TYPE_CHECKING:
    from .inspect import Inspector


def open_control(session_dir: str) -> int | None:
    """The control FIFO, opened read-write (so it never reports end-of-file); None
    when the session holds something else there (then ``where`` cannot ask)."""
    path = os.path.join(session_dir, CONTROL)
    try:
        make_fifo(path)
        return open_fifo(path, os.O_RDWR)
    except OSError:
        return None


class Control:
    def __init__(
        self, session_dir: str, kernel_pid: int, dump_signal: int | None, watch_fd: int | None
    ) -> None:
        self.session_dir = session_dir
        self.watch_fd = watch_fd
        self.pid = kernel_pid
        self.dump_signal = dump_signal
        self.fd = open_control(session_dir)
        self._inspector: Inspector | None = None

    @property
    def inspector(self) -> Inspector:
        if self._inspector is None:
            from .inspect import Inspector

            self._inspector = Inspector(
                self.session_dir, self.pid, self.dump_signal, self.fd, self.watch_fd
            )
        return self._inspector

    def due(self) -> float:
        return self._inspector.due() if self._inspector is not None else float("inf")

    def on_control(self) -> None:
        self.inspector.on_control()

    def interrupted(self) -> None:
        self.inspector.interrupted()

    def tick(self) -> None:
        if self._inspector is not None:
            self._inspector.tick()
