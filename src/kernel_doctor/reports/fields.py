"""Reading a report's JSON field by field, each field's type checked.

The one place a report's JSON types are checked (``Report.from_json`` uses it): a
wrong type raises ``BadReport`` naming the field ("memory.peak_bytes") and the type
found, never the value (it may be long, or hostile to a terminal).
"""

from __future__ import annotations

import math
from typing import TypeAlias, TypeGuard, cast

# What json.loads returns: the values kept as they are (a hang's threads, extra keys).
JSON: TypeAlias = bool | int | float | str | list["JSON"] | dict[str, "JSON"] | None
# "kernel_doctor" and "created" are not in the contract: kept as any scalar written.
Scalar: TypeAlias = bool | int | float | str | None


class BadReport(ValueError):
    """Not a report: not a JSON object, or a field of the wrong type. ``field`` names
    the field ("memory.peak_bytes"), or is "" for the document as a whole."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}" if field else problem)


def _kind(value: object) -> str:
    """A JSON value's type, in words (never the value: it may be long or hostile)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# JSON numbers a report can hold: byte counts, pids and times fit in 64 bits. A larger
# integer (json reads 400 digits as well as 4), inf or NaN would crash whatever formats
# it (sizes, dates, the server's JSON), so it makes the report invalid instead.
_LIMIT = 2**63


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and -_LIMIT < value < _LIMIT


def _is_number(value: object) -> TypeGuard[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return _is_int(value) if isinstance(value, int) else math.isfinite(value)


class Fields:
    """One JSON object being read: each getter checks its key's type, and a key that
    is missing gives the getter's default."""

    def __init__(self, value: object, name: str) -> None:
        if not isinstance(value, dict):
            raise BadReport(
                name, f"expected {'an object' if name else 'a JSON object'}, found {_kind(value)}"
            )
        self.values: dict[str, object] = value
        self.name = name

    def _field(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def bad(self, key: str, expected: str, value: object) -> BadReport:
        return BadReport(self._field(key), f"expected {expected}, found {_kind(value)}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.values.get(key, default)
        if not isinstance(value, str):
            raise self.bad(key, "a string", value)
        return value

    def opt_text(self, key: str) -> str | None:
        value = self.values.get(key)
        if value is not None and not isinstance(value, str):
            raise self.bad(key, "a string or null", value)
        return value

    def opt_int(self, key: str) -> int | None:
        value = self.values.get(key)
        if value is None or _is_int(value):
            return value
        raise self.bad(key, "an integer or null", value)

    def opt_number(self, key: str) -> float | None:
        value = self.values.get(key)
        if value is None or _is_number(value):
            return value
        raise self.bad(key, "a number or null", value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.values.get(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, "true or false", value)
        return value

    def scalar(self, key: str) -> Scalar:
        value = self.values.get(key)
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise self.bad(key, "a string, a number or null", value)
        return value

    def items(self, key: str) -> list[object]:
        value = self.values.get(key, [])
        if not isinstance(value, list):
            raise self.bad(key, "a list", value)
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        out = []
        for i, value in enumerate(self.items(key)):
            if not isinstance(value, str):
                raise self.bad(f"{key}[{i}]", "a string", value)
            out.append(value)
        return tuple(out)

    def points(self, key: str) -> tuple[tuple[float, int], ...]:
        """A list of [seconds, bytes] pairs: a memory timeline."""
        out = []
        for i, point in enumerate(self.items(key)):
            if isinstance(point, list) and len(point) == 2:
                t, counted = point
                if _is_number(t) and _is_int(counted):
                    out.append((t, counted))
                    continue
            raise self.bad(f"{key}[{i}]", "[seconds, bytes]", point)
        return tuple(out)

    def cell_starts(self, key: str) -> tuple[tuple[float, int | None], ...]:
        """A list of [seconds, execution count or null] pairs: when cells started."""
        out = []
        for i, point in enumerate(self.items(key)):
            if isinstance(point, list) and len(point) == 2:
                t, count = point
                if _is_number(t) and (count is None or _is_int(count)):
                    out.append((t, count))
                    continue
            raise self.bad(f"{key}[{i}]", "[seconds, execution count or null]", point)
        return tuple(out)

    def opt_object(self, key: str) -> Fields | None:
        value = self.values.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.bad(key, "an object or null", value)
        return Fields(value, self._field(key))

    def object(self, key: str) -> Fields:
        return Fields(self.values.get(key, {}), self._field(key))

    def opt_json(self, key: str, expected: type, words: str) -> JSON:
        value = self.values.get(key)
        if value is not None and not isinstance(value, expected):
            raise self.bad(key, words, value)
        return cast(JSON, value)  # kept as json.loads made it
