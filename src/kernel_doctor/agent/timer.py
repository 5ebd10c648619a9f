"""A cell's look timer: a timerfd the supervisor creates and polls, which the agent arms
as a cell starts and disarms as it ends.

The supervisor must look at a cell that has run CELL_LOOK (10 ms): it samples memory
at a busy rate from then on and wakes the watcher thread for the cell's line. It used
to learn of a cell from a poke at its start and look 10 ms later, and in a burst of
cells, where pokes are rate-limited, to look every 20 ms itself: ~70 wake-ups a
second for a burst of trivial cells, each of which cost more on a small (virtual)
machine than the look's own work, and a few per cent of the cells' round trip
together. With the timer it wakes for exactly the cells that run CELL_LOOK, and a
trivial cell costs the kernel two timerfd_settime calls (~1 µs each).

Standard library only (it runs in the kernel): ``os.timerfd_*`` from Python 3.13,
libc's through ctypes before that.
"""

from __future__ import annotations

import os
import time
from typing import Any

CLOCK_MONOTONIC = 1
_lib: Any = None


def _libc() -> Any:
    global _lib
    if _lib is None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        lib.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.timerfd_create.restype = ctypes.c_int
        lib.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.timerfd_settime.restype = ctypes.c_int
        _lib = lib
    return _lib


def create() -> int | None:
    """A new timerfd (non-blocking, close-on-exec), or None where there is none."""
    try:
        if hasattr(os, "timerfd_create"):
            # TFD_NONBLOCK and TFD_CLOEXEC are O_NONBLOCK and O_CLOEXEC on Linux.
            fd: int = os.timerfd_create(time.CLOCK_MONOTONIC, flags=os.O_NONBLOCK | os.O_CLOEXEC)
            return fd
        fd = _libc().timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
    except (AttributeError, OSError):
        return None
    return fd if fd >= 0 else None


def is_timer(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[timerfd]"
    except OSError:
        return False


def expired(fd: int) -> int:
    """Read (and so clear) the timer's expirations since the last read."""
    try:
        return int.from_bytes(os.read(fd, 8), "little")
    except OSError:  # none (non-blocking), or closed
        return 0


class CellTimer:
    """The agent's side: ``arm()`` at a cell's start, ``disarm()`` at its end."""

    def __init__(self, fd: int, after: float) -> None:
        self.fd = fd
        ns = int(after * 1e9)
        if hasattr(os, "timerfd_settime_ns"):
            self._arm: Any = lambda: os.timerfd_settime_ns(fd, initial=ns)
            self._disarm: Any = lambda: os.timerfd_settime_ns(fd, initial=0)
            return
        import ctypes
        import functools

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

        class Itimerspec(ctypes.Structure):
            _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

        # Kept with the partials below: the calls pass their addresses.
        self._specs = (
            Itimerspec(Timespec(0, 0), Timespec(ns // 10**9, ns % 10**9)),
            Itimerspec(),
        )
        settime = _libc().timerfd_settime
        on, off = (ctypes.addressof(spec) for spec in self._specs)
        self._arm = functools.partial(settime, fd, 0, on, None)
        self._disarm = functools.partial(settime, fd, 0, off, None)

    def arm(self) -> None:
        self._arm()

    def disarm(self) -> None:
        self._disarm()

    def close(self) -> None:
        try:
            self._disarm()
            os.close(self.fd)
        except OSError:
            pass


def take(variable: str, after: float) -> CellTimer | None:
    """The timer whose descriptor ``variable`` names, if it is one; the variable is
    removed so that no process started from the kernel takes whatever has that number."""
    text = os.environ.pop(variable, "")
    if not text.isdigit() or not is_timer(int(text)):
        return None
    fd = int(text)
    try:
        os.set_inheritable(fd, False)
        timer = CellTimer(fd, after)
        timer.disarm()  # a failing call shows here, not in a cell
    except (OSError, AttributeError):
        return None
    return timer
