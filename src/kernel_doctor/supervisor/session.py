"""A supervised kernel's session directory: where evidence is written as it happens.

The files and their records are the session protocol's (``agent.protocol``); this
is the supervisor's writing side of it."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from ..agent.private import check_private_dir
from ..agent.protocol import (
    EVENTS,
    SAMPLE,
    SAMPLES,
    Meta,
    event_line,
    open_append,
    write_meta,
)


def _own_dir(directory: str) -> str:
    """``directory`` as a private folder: made 0700, or one of this user's own folders
    (not a symlink) tightened to 0700; anything else raises ``OSError``."""
    try:
        os.makedirs(directory, mode=0o700)
    except FileExistsError:
        info = os.lstat(directory)
        if info.st_uid == os.geteuid() and os.path.isdir(directory) and info.st_mode & 0o077:
            os.chmod(directory, 0o700)  # a caller's own --session folder
    check_private_dir(directory)
    return directory


class Session:
    """Append-only files the supervisor writes while the kernel runs.

    Writes that fail (a full disk) are dropped: the kernel matters more than its
    evidence. What the diagnosis cannot do without is also kept in memory."""

    def __init__(self, directory: str) -> None:
        self.directory = _own_dir(directory)
        self.meta: Meta | None = None
        self.write_error: OSError | None = None
        self._events = open_append(directory, EVENTS)
        self._samples = open_append(directory, SAMPLES)

    @classmethod
    def create(cls, base: str | None = None) -> Session:
        from ..paths import sessions_dir

        root = base or sessions_dir()
        name = f"{os.getpid()}-{int(time.time() * 1000)}"
        return cls(os.path.join(root, name))

    def write_meta(self, meta: Meta) -> None:
        self.meta = meta
        try:
            write_meta(self.directory, meta)
        except OSError as exc:
            self.write_error = exc

    def event(self, kind: str, **fields: Any) -> None:
        with contextlib.suppress(OSError):
            os.write(self._events, event_line(kind, time.time(), fields))

    def sample(self, elapsed: float, counted: int, kernel_rss: int) -> None:
        with contextlib.suppress(OSError):
            os.write(self._samples, SAMPLE.pack(elapsed, counted, kernel_rss))

    def close(self) -> None:
        for fd in (self._events, self._samples):
            with contextlib.suppress(OSError):
                os.close(fd)

    def remove(self) -> None:
        import shutil

        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)
