"""The session protocol: the files a supervised kernel's session folder holds, and
the typed records in them, each with one writer and one reader.

Both sides import this module: the supervisor from kernel-doctor's own Python, the
agent from inside the kernel (possibly another Python, loaded by path), and every
reader of a session (``live``, ``where``, ``top``, the server, recovery). So it uses
the standard library only, and every file goes through ``private`` (this user's
own regular files, never a symlink, never a blocking open): a session folder may sit
where other users can see it, and its contents are only as trustworthy as its owner.

A session directory (0700) holds:

``cells.jsonl``  the agent's flight record: one JSON line when a cell starts and one
                 when it ends, written unbuffered so a SIGKILL loses nothing.
``state``        a fixed-size memory-mapped record of what the kernel is doing right
                 now (busy, running cell, its current line), rewritten while a cell
                 runs, and how many threads it is starting; see ``StateFile``.
``dumps.txt``    faulthandler stack dumps asked for by the supervisor's dump signal.
``fatal.txt``    faulthandler's dump at a fatal signal (SIGSEGV, SIGABRT, ...).
``samples.bin``  the supervisor's memory samples (see ``SAMPLE``).
``events.jsonl`` the supervisor's own record (start, limit, marks, signals).
``stderr.log``   the tail of the kernel's stderr.
``meta.json``    what the supervisor knew at the start (``Meta``).
``control``      a FIFO through which ``kernel-doctor where`` asks for a ``Look``.
``where-NONCE.json``, ``interrupt.json``  the supervisor's looks (``Look``).
``where.request``, ``where-agent.json``   the agent's half of a look.
``guard.json``, ``notice.json``           guard trips and the last death's notice.

Readers treat a record that does not parse or has wrong types as absent: a session
written by another version, or cut short by a death, must never crash a reader.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from .held import HELD, read_held
from .looks import (
    LOOK_SCHEMA,
    AgentAnswer,
    Frame,
    Look,
    LookCell,
    LookPhase,
    OsThread,
    PyThread,
    valid,
)
from .private import append_private, open_private, read_private, write_atomic
from .records import (
    CellError,
    CellRecord,
    Event,
    GuardInfo,
    GuardStop,
    GuardTrip,
    LimitRecord,
    Meta,
    Sample,
    State,
    _float,
    _int,
    _load,
    _str,
)
from .state import STATE_SIZE, StateFile

# The records are part of the protocol: import them from here.
__all__ = [
    "STATE_SIZE",
    "AgentAnswer",
    "CellError",
    "CellRecord",
    "Event",
    "Frame",
    "GuardInfo",
    "GuardStop",
    "GuardTrip",
    "LimitRecord",
    "Look",
    "LookCell",
    "LookPhase",
    "Meta",
    "OsThread",
    "PyThread",
    "Sample",
    "State",
    "StateFile",
]

ENV_SESSION = "KERNEL_DOCTOR_SESSION"
ENV_DUMP_SIGNAL = "KERNEL_DOCTOR_DUMP_SIGNAL"
# A pipe's write end the agent pokes when a cell starts, so the supervisor samples a
# new cell at once instead of at its next idle tick (a fill can outrun that).
ENV_WAKE_FD = "KERNEL_DOCTOR_WAKE_FD"
# A pipe's read end on which the supervisor tells the agent's watcher thread that a cell
# is still running at its first look, so only such cells wake the thread (a wake-up on
# 2 cores costs a trivial cell's round trip more than the watcher's work).
ENV_WATCH_FD = "KERNEL_DOCTOR_WATCH_FD"
ENV_REPORTS = "KERNEL_DOCTOR_REPORTS"  # where stored reports are, for %doctor
# RLIMIT_DATA's soft value before the memory guard's ceiling, which the supervisor may
# set before the agent loads (so a refusal can be told from an ordinary MemoryError).
ENV_DATA_LIMIT = "KERNEL_DOCTOR_DATA_LIMIT"
# Where the supervisor copies the kernel's stderr instead of its own (run's log): read
# by the supervisor only, never passed on to the kernel.
ENV_KERNEL_OUTPUT = "KERNEL_DOCTOR_KERNEL_OUTPUT"
# The death notice's line that the agent replaces when a checkpoint can bring them back.
VARIABLES_GONE = "  Its variables are gone: this is a new kernel, started afresh.\n"
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
CONTROL = "control"
INTERRUPT = "interrupt.json"
REQUEST = "where.request"  # the nonce of the supervisor's pending request to the agent
ANSWER = "where-agent.json"  # the agent's answer to it


def look_file(nonce: str) -> str:
    return f"where-{nonce}.json"


def _dump(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


# -- meta.json: what the supervisor knew at the start ------------------------------


def write_meta(directory: str, meta: Meta) -> None:
    write_atomic(os.path.join(directory, META), _dump(meta.to_json()))


def read_meta(directory: str) -> Meta | None:
    return Meta.from_json(_load(read_private(os.path.join(directory, META))))


# -- state: what the kernel is doing right now --------------------------------------


def read_state(session_dir: str) -> State | None:
    """The agent's last state record in ``session_dir``, or None if there is none."""
    try:
        state = StateFile(os.path.join(session_dir, STATE), writable=False)
    except (OSError, ValueError):
        return None
    try:
        return state.read()
    finally:
        state.close()


# -- cells.jsonl: the agent's flight record -----------------------------------------


def read_cells(session_dir: str) -> list[CellRecord]:
    """Every complete record of the agent's flight record, oldest first: the log's,
    then those the agent still holds in its shared mapping (``held``)."""
    # The held lines first: the agent appends them to the log, then clears them, so
    # read in this order none is missed, and one read in between is in both.
    held = read_held(os.path.join(session_dir, HELD)).splitlines()
    data = read_private(os.path.join(session_dir, CELLS), limit=1 << 30)
    lines = (data or b"").splitlines()
    if held:
        logged = set(lines[-len(held) :])
        lines += [line for line in held if line not in logged]
    records = []
    for line in lines:
        record = CellRecord.from_json(_load(line))  # a line cut short by a death: None
        if record is not None:
            records.append(record)
    return records


def started_cell(session_dir: str, seq: int | None) -> CellRecord | None:
    """The start record of the cell the agent numbered ``seq`` (the running one's, as
    the state record says), or None."""
    if seq is None:
        return None
    for record in reversed(read_cells(session_dir)):
        if record.event == "start" and record.seq == seq:
            return record
    return None


# -- samples.bin: the supervisor's memory samples -----------------------------------


SAMPLE = struct.Struct("<dqq")


def read_samples(directory: str) -> list[Sample]:
    data = read_private(os.path.join(directory, SAMPLES), limit=1 << 30) or b""
    usable = len(data) - len(data) % SAMPLE.size
    return [Sample(*SAMPLE.unpack_from(data, i)) for i in range(0, usable, SAMPLE.size)]


def last_sample(directory: str) -> Sample | None:
    """The newest sample alone, read from the file's end: for views that refresh."""
    try:
        fd = open_private(os.path.join(directory, SAMPLES))
    except OSError:
        return None
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        usable = end - end % SAMPLE.size
        if usable == 0:
            return None
        data = os.pread(fd, SAMPLE.size, usable - SAMPLE.size)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) < SAMPLE.size:
        return None
    return Sample(*SAMPLE.unpack(data))


# -- events.jsonl: the supervisor's own record --------------------------------------


def event_line(kind: str, t: float, fields: dict[str, Any]) -> bytes:
    return json.dumps({"event": kind, "t": t, **fields}).encode() + b"\n"


def read_events(directory: str) -> list[Event]:
    events = []
    for line in (read_private(os.path.join(directory, EVENTS)) or b"").splitlines():
        record = _load(line)
        if record is None:
            continue
        kind, t = _str(record.get("event")), _float(record.get("t"))
        if kind is not None and t is not None:
            events.append(Event(kind, t, _int(record.get("offset"))))
    return events


# -- looks: ``kernel-doctor where`` and ignored interrupts --------------------------


def write_look(path: str, look: Look) -> None:
    write_atomic(path, json.dumps(look).encode())


def read_look(path: str) -> Look | None:
    record = _load(read_private(path))
    try:
        if record is None or not valid(record, LOOK_SCHEMA):
            return None
    except RecursionError:  # nested without end: not one of ours
        return None
    look: Look = record  # type: ignore[assignment]  # checked against the schema
    return look


def read_answer(session_dir: str, nonce: str) -> list[PyThread] | None:
    record = _load(read_private(os.path.join(session_dir, ANSWER)))
    if record is None or record.get("nonce") != nonce:
        return None
    threads = record.get("threads")
    if not valid(threads, LOOK_SCHEMA["python"]):
        return None
    checked: list[PyThread] = threads  # type: ignore[assignment]  # checked
    return checked


def write_answer(session_dir: str, answer: AgentAnswer) -> None:
    write_atomic(os.path.join(session_dir, ANSWER), json.dumps(answer).encode())


def read_request(session_dir: str) -> str | None:
    data = read_private(os.path.join(session_dir, REQUEST), limit=64)
    text = data.decode("ascii", "replace").strip() if data else ""
    return text if text.isalnum() else None


def write_request(session_dir: str, nonce: str) -> None:
    write_atomic(os.path.join(session_dir, REQUEST), nonce.encode())


# -- guard.json and notice.json: from the supervisor to the agent -------------------


def write_guard_trip(session_dir: str, trip: GuardTrip) -> None:
    write_atomic(os.path.join(session_dir, GUARD), json.dumps(trip).encode())


def read_guard_trip(session_dir: str) -> GuardTrip | None:
    record = _load(read_private(os.path.join(session_dir, GUARD)))
    if record is None:
        return None
    ints = ("seq", "usage_bytes", "limit_bytes", "threshold_bytes")
    if any(_int(record.get(k)) is None for k in ints):
        return None
    if not all(isinstance(record.get(k), str) for k in ("limit_source", "threshold_text")):
        return None
    trip: GuardTrip = record  # type: ignore[assignment]  # checked above
    return trip


def write_notice(session_dir: str, text: str) -> None:
    write_atomic(os.path.join(session_dir, NOTICE), json.dumps({"text": text}).encode())


def take_notice(session_dir: str) -> str | None:
    """The notice left for this kernel, removed as it is read (shown once)."""
    path = os.path.join(session_dir, NOTICE)
    record = _load(read_private(path))
    if record is None:
        return None
    try:
        os.unlink(path)
    except OSError:
        pass
    text = record.get("text")
    return text if isinstance(text, str) else None


# -- the agent's own append-only files ----------------------------------------------


def poke(fd: int | None, what: bytes) -> int | None:
    """Write ``what`` to a wake-up pipe without blocking; the descriptor, or None once
    the reader is gone. A full pipe is a reader already due to wake."""
    if fd is not None:
        try:
            os.write(fd, what)
        except BlockingIOError:
            pass
        except OSError:
            return None
    return fd


def open_append(session_dir: str, name: str) -> int:
    """``name`` in the session, for appending (0600, this user's, no symlink)."""
    return append_private(os.path.join(session_dir, name))


def read_text(session_dir: str, name: str, limit: int = 1 << 26) -> str:
    data = read_private(os.path.join(session_dir, name), limit)
    return data.decode(errors="replace") if data else ""
