"""The memory guard's in-kernel half: stop the growing cell with a MemoryError.

The supervisor watches memory against the limit; when the running cell grows it past
the guard threshold, it writes what it saw to ``guard.json`` in the session and sends
the guard signal. The handler here runs in the main thread between two bytecodes of
the cell and raises ``KernelDoctorMemoryError`` there: the cell stops, the kernel and
its variables stay. Standard library only, like the rest of the agent.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

from .layout import GUARD, guard_signal

# Measuring the namespace must never be what makes a stopped cell slow.
SIZE_BUDGET = 0.05  # seconds
SAMPLE_ITEMS = 200  # elements measured per container; the rest estimated from them


class KernelDoctorMemoryError(MemoryError):
    """Raised in a cell whose growth took memory past the guard threshold."""

    def __init__(self, message: str, guard: dict[str, Any]) -> None:
        super().__init__(message)
        self.guard = guard


def _size(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)  # NumPy arrays, many array libraries
    if isinstance(nbytes, int):
        return nbytes
    usage = getattr(value, "memory_usage", None)  # pandas
    if callable(usage) and type(value).__module__.startswith("pandas"):
        try:
            total = usage(deep=False)
            return int(total.sum() if hasattr(total, "sum") else total)
        except Exception:
            return sys.getsizeof(value)
    size = sys.getsizeof(value)
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        items = list(value.values() if isinstance(value, dict) else value)
        if items:
            sample = items[:SAMPLE_ITEMS]
            inner = sum(_shallow(v) for v in sample)
            size += inner * len(items) // len(sample)
    return size


def _shallow(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else sys.getsizeof(value)


def biggest_variables(
    namespace: dict[str, Any], hidden: Any = (), count: int = 3
) -> list[tuple[str, int]]:
    """The largest user variables, measured within SIZE_BUDGET (estimates past it);
    IPython's own names (``hidden``: In, Out, exit…) are not the user's."""
    deadline = time.monotonic() + SIZE_BUDGET
    sizes = []
    for name, value in list(namespace.items()):
        if name.startswith("_") or name in hidden or callable(value):
            continue
        if type(value).__name__ == "module":
            continue
        if time.monotonic() > deadline:
            break
        try:
            sizes.append((name, _size(value)))
        except Exception:
            continue
    return sorted(sizes, key=lambda item: item[1], reverse=True)[:count]


def format_bytes(num: float | None) -> str:
    """Like kernel_doctor.sizes.format_size, which the agent cannot import (it is
    loaded by path into kernels whose Python may lack kernel-doctor)."""
    if num is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num) < 1024:
            return f"{num:.0f} {unit}" if unit == "B" or num >= 10 else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TiB"


def message(guard: dict[str, Any], where: str, variables: list[tuple[str, int]]) -> str:
    usage, limit = guard.get("usage_bytes") or 0, guard.get("limit_bytes") or 0
    parts = [
        f"kernel-doctor's memory guard stopped this cell{where}: it took memory to "
        f"{format_bytes(usage)} of the {format_bytes(limit)} limit "
        f"({guard.get('limit_source')}), past the guard at {guard.get('threshold_text')}."
    ]
    if variables:
        listed = ", ".join(f"{name} ({format_bytes(size)})" for name, size in variables)
        parts.append(f"Biggest variables: {listed}.")
    parts.append(
        "The kernel and its variables are intact: free what you no longer need (del …) "
        "or work in smaller pieces, then go on."
    )
    return " ".join(parts)


def install(agent: Any) -> None:
    """Install the handler; the supervisor checks SigCgt before it signals."""

    def handler(signum: int, frame: FrameType | None) -> None:
        path = os.path.join(agent.session_dir, GUARD)
        try:
            with open(path, encoding="utf-8") as f:
                guard = json.load(f)
        except (OSError, ValueError):
            return
        cell = agent._cell
        if cell is None or guard.get("seq") != cell.get("seq") or frame is None:
            return  # the cell it was meant for is over
        cell_frame = agent._find_cell_frame(frame, 10_000)
        if cell_frame is None:
            return  # not in the cell's own code (IPython's machinery): next time
        line = cell_frame.f_lineno
        count = cell.get("execution_count")
        where = f" (In [{count}], line {line})" if count is not None else ""
        guard = {**guard, "tripped": True, "layer": "threshold"}
        guard.pop("seq", None)
        raise KernelDoctorMemoryError(
            message(
                guard,
                where,
                biggest_variables(agent.shell.user_ns, getattr(agent.shell, "user_ns_hidden", ())),
            ),
            guard,
        )

    signal.signal(guard_signal(), handler)
