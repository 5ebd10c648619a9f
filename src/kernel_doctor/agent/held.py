"""The flight record's newest lines, held in a shared mapping until the watcher thread
appends them to ``cells.jsonl``.

A cell's start record used to be appended to the log as the cell started: 30–40 µs of
the kernel's main thread a cell, cold, on ext4. A store into a mapped page costs a few
microseconds and survives the kernel's SIGKILL just the same (the page cache keeps it),
so records go here first, and to the log about once a second (``recorder.FLUSH_AFTER``)
or when this area is full. ``protocol.read_cells`` reads both, so readers see every
record whether or not it has reached the log. Standard library only (see ``protocol``).
"""

from __future__ import annotations

import struct

from .private import map_private

HELD = "held"
HELD_SIZE = 1 << 16  # a cell whose start record is larger goes straight to the log
# magic, generation (odd while the lines change), length of the lines held
_HEADER = struct.Struct("<4sII")
_MAGIC = b"KDH1"
_ROOM = HELD_SIZE - _HEADER.size


class HeldLines:
    """Written by the agent (under its lock), read by anyone; never blocks."""

    def __init__(self, path: str, *, writable: bool) -> None:
        self._map = map_private(path, HELD_SIZE, writable=writable)
        self._generation = 0
        self._length = 0
        if writable:
            self._publish()

    def add(self, data: bytes) -> bool:
        """Hold ``data`` (whole lines); False when it does not fit."""
        end = self._length + len(data)
        if end > _ROOM:
            return False
        self._map[_HEADER.size + self._length : _HEADER.size + end] = data
        self._length = end
        self._publish()
        return True

    @property
    def size(self) -> int:
        return self._length

    def held(self) -> bytes:
        return self._map[_HEADER.size : _HEADER.size + self._length]

    def clear(self) -> None:
        """After the lines held were appended to the log."""
        self._length = 0
        self._publish()

    def _publish(self) -> None:
        # Odd while the header changes: a reader that sees it, or a different value
        # after its copy, reads again. Lines are only ever added past the length
        # published, so a reader's copy of the lines below it stays whole.
        self._generation += 1
        self._map[0 : _HEADER.size] = _HEADER.pack(_MAGIC, self._generation * 2 - 1, 0)
        self._map[0 : _HEADER.size] = _HEADER.pack(_MAGIC, self._generation * 2, self._length)

    def read(self) -> bytes:
        """The lines held now, as another process sees them ("" if none or unsure)."""
        for _ in range(20):
            magic, generation, length = _HEADER.unpack_from(self._map, 0)
            if magic != _MAGIC or length > _ROOM:
                return b""
            data = self._map[_HEADER.size : _HEADER.size + length]
            if generation % 2 == 0 and _HEADER.unpack_from(self._map, 0)[1] == generation:
                return data
        return b""

    def close(self) -> None:
        self._map.close()


def read_held(path: str) -> bytes:
    try:
        held = HeldLines(path, writable=False)
    except (OSError, ValueError):
        return b""
    try:
        return held.read()
    finally:
        held.close()
