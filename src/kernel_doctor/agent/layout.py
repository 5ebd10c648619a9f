"""The files a supervised kernel's session shares between agent and supervisor.

Both sides import this module: the supervisor from kernel-doctor's own Python, the
agent from inside the kernel (possibly another Python, loaded by path). So it uses
the standard library only.

A session directory holds:

``cells.jsonl``  the agent's flight record: one JSON line when a cell starts and one
                 when it ends, written unbuffered so a SIGKILL loses nothing.
``state``        a fixed-size memory-mapped record of what the kernel is doing right
                 now (busy, running cell, its current line), rewritten while a cell
                 runs; see ``StateFile``.
``dumps.txt``    faulthandler stack dumps asked for by the supervisor's dump signal.
``fatal.txt``    faulthandler's dump at a fatal signal (SIGSEGV, SIGABRT, ...).
``samples.bin``  the supervisor's memory samples (see ``SAMPLE``).
``events.jsonl`` the supervisor's own record (start, limit, marks, signals).
``stderr.log``   the tail of the kernel's stderr.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Any

ENV_SESSION = "KERNEL_DOCTOR_SESSION"
ENV_DUMP_SIGNAL = "KERNEL_DOCTOR_DUMP_SIGNAL"
# A pipe's write end the agent pokes when a cell starts, so the supervisor samples a
# new cell at once instead of at its next idle tick (a fill can outrun that).
ENV_WAKE_FD = "KERNEL_DOCTOR_WAKE_FD"
ENV_REPORTS = "KERNEL_DOCTOR_REPORTS"  # where stored reports are, for %doctor
# RLIMIT_DATA's soft value before the memory guard's ceiling, which the supervisor may
# set before the agent loads (so a refusal can be told from an ordinary MemoryError).
ENV_DATA_LIMIT = "KERNEL_DOCTOR_DATA_LIMIT"
GUARD = "guard.json"  # what the supervisor saw when it tripped the memory guard
NOTICE = "notice.json"  # the previous kernel's death, for the next cell to show


def dump_signal() -> int:
    """The real-time signal the supervisor sends to ask the agent for a stack dump
    (SIGRTMIN+6: clear of glibc's own and of the low ones other tools favour)."""
    import signal

    return int(signal.SIGRTMIN) + 6


def guard_signal() -> int:
    """The signal that tells the agent the memory guard tripped (SIGRTMIN+8)."""
    import signal

    return int(signal.SIGRTMIN) + 8


CELLS = "cells.jsonl"
STATE = "state"
DUMPS = "dumps.txt"
FATAL = "fatal.txt"
SAMPLES = "samples.bin"
EVENTS = "events.jsonl"
STDERR = "stderr.log"
META = "meta.json"

# One memory sample: seconds since the kernel started, bytes the limit counts,
# RSS of the kernel's process tree.
SAMPLE = struct.Struct("<dqq")

STATE_SIZE = 8192
_HEADER = struct.Struct("<4sII")  # magic, sequence, payload length
_MAGIC = b"KDS1"


class StateFile:
    """A small record rewritten in place through a shared mapping.

    Writes are plain memory stores, so they cost microseconds and survive the
    kernel's SIGKILL (the page cache keeps them). The sequence number is odd while
    a write is in progress, so a reader can tell a torn record and retry.
    """

    def __init__(self, path: str, *, writable: bool) -> None:
        flags = os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY
        fd = os.open(path, flags, 0o600)
        try:
            if writable and os.fstat(fd).st_size < STATE_SIZE:
                # Real blocks, not a sparse file: a store into a page the filesystem
                # cannot back (a full disk) would kill the kernel with SIGBUS.
                os.posix_fallocate(fd, 0, STATE_SIZE)
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self._map = mmap.mmap(fd, STATE_SIZE, access=access)
        finally:
            os.close(fd)
        self._seq = 0

    def write(self, payload: dict[str, Any]) -> None:
        self.write_bytes(json.dumps(payload, separators=(",", ":")).encode())

    def write_bytes(self, data: bytes) -> None:
        """Write an encoded JSON object."""
        if len(data) > STATE_SIZE - _HEADER.size:
            data = json.dumps({"truncated": True}).encode()
        self._seq += 1
        self._map[0 : _HEADER.size] = _HEADER.pack(_MAGIC, self._seq * 2 - 1, len(data))
        self._map[_HEADER.size : _HEADER.size + len(data)] = data
        self._map[0 : _HEADER.size] = _HEADER.pack(_MAGIC, self._seq * 2, len(data))

    def read(self) -> dict[str, Any] | None:
        for _ in range(20):
            magic, seq, length = _HEADER.unpack_from(self._map, 0)
            if magic != _MAGIC or length > STATE_SIZE - _HEADER.size:
                return None
            data = self._map[_HEADER.size : _HEADER.size + length]
            if seq % 2 == 0 and _HEADER.unpack_from(self._map, 0)[1] == seq:
                try:
                    value = json.loads(data)
                except ValueError:
                    return None
                return value if isinstance(value, dict) else None
        return None

    def close(self) -> None:
        self._map.close()


def read_state(session_dir: str) -> dict[str, Any] | None:
    """The agent's last state record in ``session_dir``, or None if there is none."""
    try:
        state = StateFile(os.path.join(session_dir, STATE), writable=False)
    except (OSError, ValueError):
        return None
    try:
        return state.read()
    finally:
        state.close()


def read_cells(session_dir: str) -> list[dict[str, Any]]:
    """Every complete record of the agent's flight record, oldest first."""
    try:
        with open(os.path.join(session_dir, CELLS), "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kernel's death
        if isinstance(record, dict):
            records.append(record)
    return records


def read_samples(directory: str) -> list[tuple[float, int, int]]:
    try:
        with open(os.path.join(directory, SAMPLES), "rb") as f:
            data = f.read()
    except OSError:
        return []
    usable = len(data) - len(data) % SAMPLE.size
    return [SAMPLE.unpack_from(data, i) for i in range(0, usable, SAMPLE.size)]


def last_sample(directory: str) -> tuple[float, int, int] | None:
    """The newest sample alone, read from the file's end: for views that refresh."""
    try:
        with open(os.path.join(directory, SAMPLES), "rb") as f:
            end = f.seek(0, os.SEEK_END)
            usable = end - end % SAMPLE.size
            if usable == 0:
                return None
            f.seek(usable - SAMPLE.size)
            data = f.read(SAMPLE.size)
    except OSError:
        return None
    if len(data) < SAMPLE.size:
        return None
    value: tuple[float, int, int] = SAMPLE.unpack(data)
    return value


def read_meta(directory: str) -> dict[str, Any]:
    try:
        with open(os.path.join(directory, META)) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
