"""Memory sizes as Docker and systemd read them, and as people like to see them."""

from __future__ import annotations

import re

from ._errors import UsageError

# Docker and systemd read K/M/G/T as binary units; we accept the explicit forms too.
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
MAX_SIZE = 2**62  # cgroups read anything above as "no limit"
# The smallest --memory-limit a kernel can start under. Measured: an idle python3
# ipykernel (Python 3.11, ipykernel 7.4) charges 53 MiB to its memory cgroup (51.7 MiB
# RSS); under a 48 MiB limit it is OOM-killed while starting, under 56 MiB it runs.
# 64 MiB is that plus a little room; below it a "kernel died: out of memory" would
# only say that the limit was too small to start in.
MIN_MEMORY_LIMIT = 64 * 1024**2
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes in ``text`` ('512M', '1.5G', '2GiB', '1073741824'); UsageError if unreadable."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise UsageError(
            f"cannot read {text!r} as a memory size: use a number with an optional unit, "
            "e.g. 512M, 1.5G or 2GiB"
        )
    try:
        value = int(float(match.group(1)) * _UNITS[unit])
    except OverflowError:  # more digits than a float holds
        value = MAX_SIZE + 1
    if value > MAX_SIZE:
        raise UsageError(f"memory size {text!r} is larger than any machine's memory")
    if value <= 0:
        raise UsageError(f"memory size {text!r} must be more than zero")
    return value


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
