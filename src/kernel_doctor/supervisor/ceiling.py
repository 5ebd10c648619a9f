"""The memory guard's allocation layer: an allocation that cannot fit fails at once.

The kernel's ``RLIMIT_DATA`` (soft) is kept at what it has mapped now plus what the
limit leaves plus a reserve, so ``np.zeros`` of 20 GiB in an 8 GiB container raises
``MemoryError`` in the cell instead of starting an OOM death.

Why ``RLIMIT_DATA`` and why the reserve (measured, MACHINE-FACTS.md): it counts
private writable mappings whether touched or not, but not PROT_NONE reservations, so
PyTorch's and JAX's address-space reservations are free until committed. It does count
each thread's 8 MiB stack, which costs almost no memory: a reserve of a few hundred
MiB let only 37–65 more threads start. And libzmq aborts when an allocation fails, so
the ceiling must never starve the kernel's own small allocations. The reserve is
therefore room for 128 thread stacks (1 GiB at the usual 8 MiB): a refused allocation
is one larger than what the limit leaves plus that, which no real memory could hold;
growth below it is the threshold layer's job. The ceiling follows the kernel at every
sample, so it never stays below what memory the kernel could really get.
"""

from __future__ import annotations

import resource
from typing import Any

# Thread stacks the reserve leaves room for, beyond what the limit leaves.
RESERVED_STACKS = 128
DEFAULT_STACK = 8 * 1024**2
# A new ceiling is set only when it moved this much: one prlimit call, not one a sample.
STEP = 4 * 1024**2


def reserve() -> int:
    """Room for RESERVED_STACKS thread stacks of the size new threads get."""
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    stack = soft if 0 < soft != resource.RLIM_INFINITY and soft < 2**31 else DEFAULT_STACK
    return RESERVED_STACKS * max(stack, DEFAULT_STACK)


class Ceiling:
    """The kernel process's RLIMIT_DATA, moved with the kernel; restored on release."""

    def __init__(self, pid: int, limit_bytes: int) -> None:
        self.pid = pid
        self.limit_bytes = limit_bytes
        self.reserve = reserve()
        self.original = resource.prlimit(pid, resource.RLIMIT_DATA)
        self.current: int | None = None  # the ceiling set last; None while released
        self.error: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"reserve_bytes": self.reserve, "ceiling_bytes": self.current}

    def update(self, data_bytes: int, counted: int) -> None:
        """``data_bytes``: the kernel's private writable mappings now (statm's data);
        ``counted``: what the limit counts now (the whole cgroup's working set)."""
        if self.error is not None:
            return
        room = max(0, self.limit_bytes - counted)
        ceiling = data_bytes + room + self.reserve
        soft, hard = self.original
        for bound in (soft, hard):  # never above what the user or the system set
            if bound != resource.RLIM_INFINITY:
                ceiling = min(ceiling, bound)
        if self.current is not None and abs(ceiling - self.current) < STEP:
            return
        self._set(ceiling)

    def release(self) -> None:
        if self.current is not None:
            self._set(None)

    def _set(self, ceiling: int | None) -> None:
        soft = self.original[0] if ceiling is None else ceiling
        try:
            resource.prlimit(self.pid, resource.RLIMIT_DATA, (soft, self.original[1]))
        except (OSError, ValueError) as exc:
            # The kernel is gone, or we may not change its limits: the threshold
            # layer still works, and this one stays off.
            self.error = str(exc)
            self.current = None
            return
        self.current = ceiling
