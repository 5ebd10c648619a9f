"""The whole machine's memory as the limit, when no cgroup limit applies."""

from __future__ import annotations

import os
import resource

from .base import MemoryLimit, MemorySource, keyed, parse_keyed, read_text
from .files import Reader


class SystemMemory(MemorySource):
    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        info = parse_keyed(read_text(os.path.join(proc, "meminfo")))
        total = (info.get("MemTotal", 0) + info.get("SwapTotal", 0)) * 1024
        self.limit = MemoryLimit(total, "system", "system RAM + swap")
        self._meminfo = Reader(os.path.join(proc, "meminfo"))
        self._vmstat = Reader(os.path.join(proc, "vmstat"))

    def counted(self) -> int | None:
        total, available = keyed(self._meminfo.read(), "MemTotal", "MemAvailable")
        if total is None or available is None:
            return None
        return (total - available) * 1024

    def oom_kills(self) -> int | None:
        return keyed(self._vmstat.read(), "oom_kill")[0]

    def close(self) -> None:
        self._meminfo.close()
        self._vmstat.close()


def address_space_limits() -> dict[str, int]:
    """RLIMIT_AS / RLIMIT_DATA where set. They cap virtual memory and make allocations
    fail with MemoryError rather than kill, so they are context, never compared with RSS."""
    limits = {}
    for name in ("RLIMIT_AS", "RLIMIT_DATA"):
        number = getattr(resource, name, None)
        if number is None:
            continue
        soft, _hard = resource.getrlimit(number)
        if soft != resource.RLIM_INFINITY:
            limits[name] = soft
    return limits
