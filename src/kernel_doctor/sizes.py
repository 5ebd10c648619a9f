"""Memory sizes as Docker and systemd read them, and as people like to see them."""

from __future__ import annotations

from ._errors import UsageError
from .agent.settings import MAX_SIZE, size_bytes

__all__ = ["MAX_SIZE", "MIN_MEMORY_LIMIT", "format_size", "parse_size"]

# The smallest --memory-limit a kernel can start under. Measured: an idle python3
# ipykernel (Python 3.11, ipykernel 7.4) charges 53 MiB to its memory cgroup (51.7 MiB
# RSS); under a 48 MiB limit it is OOM-killed while starting, under 56 MiB it runs.
# 64 MiB is that plus a little room; below it a "kernel died: out of memory" would
# only say that the limit was too small to start in.
MIN_MEMORY_LIMIT = 64 * 1024**2


def parse_size(text: str) -> int:
    """Bytes in ``text`` ('512M', '1.5G', '2GiB', '1073741824'); UsageError if unreadable
    (the one reader is ``agent.settings``, which the agent shares)."""
    try:
        return size_bytes(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def format_size(num_bytes: int | None) -> str:
    """'1.5 GiB', '300 MiB', '12 KiB', '800 B'; 'unknown' for None."""
    if num_bytes is None:
        return "unknown"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        # Compare the rounded figure, so 1023.96 MiB reads "1.0 GiB", not "1024 MiB".
        shown = round(value, 1) if value < 10 else round(value)
        if unit == "B" and abs(value) < 1024:
            return f"{int(value)} B"
        if abs(shown) < 1024:
            return f"{shown:.1f} {unit}" if value < 10 else f"{shown:.0f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB" if value < 10 else f"{value:.0f} TiB"
