"""The interface every memory-limit source implements.

A source is found once, by the supervisor, right after the kernel starts
(``find_memory_source`` in ``limits``); the supervisor then calls ``counted`` at
every sample, ``oom_kills`` at start and at the kernel's exit, and ``watch`` once
to get a file descriptor that wakes it when usage crosses a mark. Sources never
raise from these calls: a value that cannot be read is None.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from .files import keyed, parse_keyed, read_int, read_text

__all__ = [
    "MemoryLimit",
    "MemorySource",
    "Watch",
    "keyed",
    "parse_keyed",
    "read_int",
    "read_text",
]


@dataclass(frozen=True)
class MemoryLimit:
    """The memory limit that really applies to a kernel, and where it comes from."""

    limit_bytes: int
    kind: str  # "cgroup-v1" | "cgroup-v2" | "system"
    source: str  # for people: "cgroup v2 memory.max of /sys/fs/cgroup/user.slice/…"
    path: str | None = None  # the cgroup directory whose usage the limit counts


@dataclass(frozen=True)
class Watch:
    """A descriptor to poll that becomes ready when memory use crosses a mark."""

    fd: int
    events: int  # select.POLLIN or select.POLLPRI


class MemorySource(abc.ABC):
    limit: MemoryLimit
    # Active file cache within ``counted`` at its last call: reclaimable when memory
    # runs short, so room an allocation may still take (the allocation layer's view).
    active_file: int = 0

    @abc.abstractmethod
    def counted(self) -> int | None:
        """Bytes the limit counts now: usage less reclaimable file cache."""

    @abc.abstractmethod
    def oom_kills(self) -> int | None:
        """How many processes the OOM killer has killed in this scope so far."""

    def peak(self) -> int | None:
        """The highest usage the kernel recorded, where it keeps one."""
        return None

    def watch(self, marks: Sequence[int]) -> Watch | None:
        """Wake-ups at the given usage marks (bytes), where the kernel offers them."""
        return None

    def drain(self) -> None:  # noqa: B027 (a no-op unless ``watch`` opened something)
        """Consume a wake-up from ``watch``."""

    def close(self) -> None:  # noqa: B027
        """Release what ``watch`` opened."""
