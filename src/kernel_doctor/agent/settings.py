"""The one reader of memory sizes and guard settings, wherever they are given.

``kernel-doctor run --memory-limit/--guard``, ``KERNEL_DOCTOR_GUARD``, the supervisor's
``--guard`` and ``%doctor guard`` all read through here, so the same text means the
same everywhere and a bad one gets the same message. Standard library only: the agent
imports it inside the kernel. Errors are ``ValueError`` whose message is the one line
the user reads.
"""

from __future__ import annotations

import re

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
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")

GUARD_DEFAULT = "90%"
_OFF = ("off", "no", "false", "none", "0")
_ON = ("on", "yes", "true")


def size_bytes(text: str) -> int:
    """Bytes in ``text`` ('512M', '1.5G', '2GiB', '1073741824')."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"cannot read {text!r} as a memory size: use a number with an optional unit, "
            "e.g. 512M, 1.5G or 2GiB"
        )
    try:
        value = int(float(match.group(1)) * _UNITS[unit])
    except OverflowError:  # more digits than a float holds
        value = MAX_SIZE + 1
    if value > MAX_SIZE:
        raise ValueError(f"memory size {text!r} is larger than any machine's memory")
    if value <= 0:
        raise ValueError(f"memory size {text!r} must be more than zero")
    return value


def guard_setting(text: str) -> str:
    """The guard setting ``text`` names, as kernel-doctor writes it: ``"off"``, a share
    of the limit (``"85%"``) or a size (``"3G"``); ``"on"`` is the default, 90%."""
    value = text.strip().lower()
    if value in _OFF:
        return "off"
    if value in _ON:
        return GUARD_DEFAULT
    if value.endswith("%"):
        try:
            share = float(value[:-1])
        except ValueError:
            share = -1.0
        if 0 < share <= 100:
            return f"{share:g}%"
    else:
        try:
            size_bytes(value)
            return value.upper().replace(" ", "")
        except ValueError:
            pass
    raise ValueError(
        f"cannot read {text!r} as a memory guard setting: give a share of the limit "
        "above 0 and up to 100% (90%), a size (3G), or off"
    )


def guard_bytes(setting: str, limit: int) -> int | None:
    """Where a setting from ``guard_setting`` puts the guard under ``limit``; None off."""
    if setting == "off":
        return None
    if setting.endswith("%"):
        return int(limit * float(setting[:-1]) / 100)
    return min(size_bytes(setting), limit)
