"""The state record: what the kernel is doing right now, in a small shared mapping the
agent rewrites in place and anyone may read (``protocol`` names the session's files).
Standard library only (see ``protocol``)."""

from __future__ import annotations

import struct
from typing import Any

from .private import map_private
from .records import State, _load

STATE_SIZE = 8192
_HEADER = struct.Struct("<4sII")  # magic, sequence, JSON payload length
_MAGIC = b"KDS1"
# The mapping's last bytes: how many thread starts are under way in the kernel, kept
# apart from the record because any thread writes it, not the main thread alone.
_STARTS = struct.Struct("<I")
_STARTS_AT = STATE_SIZE - _STARTS.size
# Before them, what changes at every cell and statement, in binary: a JSON record
# rebuilt three times a cell cost the kernel's main thread ~9 µs a write, in place.
# flags (valid, busy), position (none, statement, JSON's), file name length, the
# cell's sequence number, when it started (NaN: none), when written, the line.
_HOT = struct.Struct("<BBHIddI")
_FILE_ROOM = 1024  # the running statement's code file name, UTF-8
_FILE_AT = _STARTS_AT - _FILE_ROOM
_HOT_AT = _FILE_AT - _HOT.size
_PAYLOAD = _HOT_AT - _HEADER.size
_VALID, _BUSY = 1, 2
_NO_POSITION, _STATEMENT, _JSON_POSITION = 0, 1, 2
_NAN = float("nan")


class StateFile:
    """A small record rewritten in place through a shared mapping.

    Writes are plain memory stores, so they cost microseconds and survive the
    kernel's SIGKILL (the page cache keeps them). The sequence number is odd while
    a write is in progress, so a reader can tell a torn record and retry.

    The record is a JSON object (what changes rarely, and the watcher's positions)
    overlaid by a binary part the agent writes at every cell's start and end and every
    statement's start: busy, seq, started, t, and the statement's file and line.
    """

    def __init__(self, path: str, *, writable: bool) -> None:
        self._map = map_private(path, STATE_SIZE, writable=writable)
        self._seq = 0
        self._length = 0  # of the JSON written last
        # The binary part as last written (the writer's copy).
        self._flags = self._position = self._cell_seq = self._line = 0
        self._started = self._t = _NAN
        self._file = b""
        self._read_key: tuple[bytes, bytes, bytes] = (b"", b"", b"")  # read last
        self._read: State | None = None

    def write_bytes(self, data: bytes, *, position: bool = False, t: float | None = None) -> None:
        """Write an encoded JSON object; ``position``: it holds the running code's
        "file", "line" and "frame", newer than the last statement's; ``t``: now."""
        if len(data) > _PAYLOAD:
            data = b'{"truncated":true}'
        self._length = len(data)
        if position:
            self._position = _JSON_POSITION
        if t is not None:
            self._t = t
        self._begin()
        self._map[_HEADER.size : _HEADER.size + len(data)] = data
        self._end(hot=position or t is not None)

    def write_cell(self, *, busy: bool, seq: int, started: float | None, t: float) -> None:
        """A cell starts (busy) or ends: no position until its first statement."""
        self._flags = _VALID | _BUSY if busy else _VALID
        self._cell_seq, self._t, self._position = seq, t, _NO_POSITION
        self._started = _NAN if started is None else started
        self._begin()
        self._end(hot=True)

    def write_statement(self, file: bytes, line: int, t: float) -> None:
        """The running cell's top-level statement starts: its code file and line."""
        if file != self._file:
            file = file[:_FILE_ROOM]
            self._begin()  # the name is only read where the position says so
            self._map[_FILE_AT : _FILE_AT + len(file)] = file
            self._file = file
        else:
            self._begin()
        self._position, self._line, self._t = _STATEMENT, line, t
        self._end(hot=True)

    def _begin(self) -> None:
        self._seq += 1
        _HEADER.pack_into(self._map, 0, _MAGIC, self._seq * 2 - 1, self._length)

    def _end(self, *, hot: bool) -> None:
        if hot:
            _HOT.pack_into(
                self._map, _HOT_AT, self._flags, self._position, len(self._file),
                self._cell_seq, self._started, self._t, self._line,
            )  # fmt: skip
        _HEADER.pack_into(self._map, 0, _MAGIC, self._seq * 2, self._length)

    def read(self) -> State | None:
        for _ in range(20):
            magic, seq, length = _HEADER.unpack_from(self._map, 0)
            if magic != _MAGIC or length > _PAYLOAD:
                return None
            data = self._map[_HEADER.size : _HEADER.size + length]
            hot = self._map[_HOT_AT:_FILE_AT]
            file_length = min(_HOT.unpack(hot)[2], _FILE_ROOM)
            file = self._map[_FILE_AT : _FILE_AT + file_length]
            if seq % 2 == 0 and _HEADER.unpack_from(self._map, 0)[1] == seq:
                key = (data, hot, file)
                if key != self._read_key:  # most samples find it unchanged
                    self._read_key, self._read = key, _state(_load(data), hot, file)
                return self._read
        return None

    def add_thread_starts(self, delta: int) -> None:
        """The writer (the caller holds a lock): a thread start begins (+1) or ends (-1).
        The supervisor leaves the kernel's RLIMIT_DATA alone while one is under way."""
        count = _STARTS.unpack_from(self._map, _STARTS_AT)[0]
        _STARTS.pack_into(self._map, _STARTS_AT, max(0, count + delta))

    def thread_starts(self) -> int:
        """Thread starts under way in the kernel now (a single aligned load)."""
        try:
            count: int = _STARTS.unpack_from(self._map, _STARTS_AT)[0]
        except ValueError:  # closed
            return 0
        return count

    def close(self) -> None:
        self._map.close()


def _state(record: dict[str, Any] | None, hot: bytes, file: bytes) -> State | None:
    """The JSON record overlaid by the binary part, where the agent wrote one."""
    flags, position, _, seq, started, t, line = _HOT.unpack(hot)
    if not flags & _VALID:
        return State.from_json(record)  # JSON alone (a record written by hand)
    merged = dict(record or {})
    merged.update(busy=bool(flags & _BUSY), seq=seq, t=t)
    merged["started"] = None if started != started else started  # NaN: none
    if position == _STATEMENT:
        name = file.decode("utf-8", "replace")
        merged.update(file=name, line=line, frame=[name, line, "<module>"])
    elif position != _JSON_POSITION:
        for key in ("file", "line", "frame"):
            merged.pop(key, None)
    return State.from_json(merged)
