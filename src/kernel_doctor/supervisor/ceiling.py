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

The ceiling is the kernel's alone, and never above the user's own limit:

* The user's limit (``Ceiling.bound``) is the kernel's at its start, then whatever the
  user sets in the kernel (``resource.setrlimit`` in a cell): every update reads the
  limit back first, and a value that is not one of our ceilings is the user's. A lower
  soft or any new hard limit becomes the bound at once; a value at or above the bound
  does only when it is still there a sample later, because the agent lifts the ceiling
  to the bound for the microseconds of a spawn (below). The write itself returns the
  value it replaced (``prlimit`` reads and sets under one lock in the kernel), so a
  limit set between our read and our write is never lost: it is taken as the bound,
  or handed back if it was the agent's lift. (Our ceiling was above it for those
  microseconds; a hard limit lowered meanwhile makes the write fail, as we may not
  raise it, and it is retried from what is there.) A value the user sets that equals
  one of our last few ceilings is taken for ours; no user picks those numbers.
* The kernel's children must start with the user's limit, not the ceiling (a child's
  40 GiB ``MAP_NORESERVE`` reservation must work as in a plain kernel). Forked
  children reset it in an ``os.register_at_fork`` hook; processes it execs without
  Python's fork hooks (``subprocess``, ``os.system``, ``os.posix_spawn``,
  ``multiprocessing``'s spawn) get it from the agent's lift around the spawn: see
  ``kernel_doctor.agent.guard``, which says why, with the measurements.
"""

from __future__ import annotations

import resource
from collections import deque

# Thread stacks the reserve leaves room for, beyond what the limit leaves.
RESERVED_STACKS = 128
DEFAULT_STACK = 8 * 1024**2
# A new ceiling is set only when it moved this much: one prlimit call, not one a sample.
STEP = 4 * 1024**2
# Ceilings set lately, still recognised as ours when read back: the agent puts the one
# it lifted back after a spawn, which may be older than the last we set.
KEPT = 8

Limits = tuple[int, int]  # (soft, hard), as resource.prlimit has them


def reserve() -> int:
    """Room for RESERVED_STACKS thread stacks of the size new threads get."""
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    stack = soft if 0 < soft != resource.RLIM_INFINITY and soft < 2**31 else DEFAULT_STACK
    return RESERVED_STACKS * max(stack, DEFAULT_STACK)


def _num(value: int) -> int:
    """A limit as a number to compare (Python has RLIM_INFINITY as -1)."""
    return 1 << 64 if value == resource.RLIM_INFINITY else value


class Ceiling:
    """The kernel process's RLIMIT_DATA, moved with the kernel; restored on release."""

    def __init__(self, pid: int, limit_bytes: int) -> None:
        self.pid = pid
        self.limit_bytes = limit_bytes
        self.reserve = reserve()
        self.original: Limits = resource.prlimit(pid, resource.RLIMIT_DATA)
        # The user's limit, which the ceiling never exceeds: the kernel's own at its
        # start, then whatever the user sets in it.
        self.bound: Limits = self.original
        self.current: int | None = None  # the soft limit set last; None while released
        self.error: str | None = None
        self._ours: deque[int] = deque(maxlen=KEPT)  # ceilings set lately, below the bound
        self._raised: int | None = None  # a value at or above the bound, seen once

    def update(self, data_bytes: int, counted: int) -> None:
        """``data_bytes``: the kernel's private writable mappings now (statm's data);
        ``counted``: what the limit counts now (the whole cgroup's working set)."""
        if self.error is not None:
            return
        seen = self._read()
        if seen is None or not self._settle(seen):
            return
        room = max(0, self.limit_bytes - counted)
        ceiling = self._clamp(data_bytes + room + self.reserve)
        if seen[0] == self.current and abs(ceiling - self.current) < STEP:
            return
        self._set(ceiling, seen)

    def release(self) -> None:
        """Give the kernel the user's limit back, unless the user has set one since."""
        if self.current is None:
            return
        seen = self._read()
        if seen is None:
            return
        ours = self._is_ours(seen[0])
        self.current = None
        if not ours:
            return  # the user's limit (or the agent's lift to it) is already there
        old = self._write(self.bound)
        if old is not None and old != seen and not self._is_ours(old[0]):
            self._write(old)  # the user set theirs between our read and our write

    def _is_ours(self, soft: int) -> bool:
        return soft == self.current or soft in self._ours

    def _settle(self, seen: Limits) -> bool:
        """Take a limit the user set as the new bound; False to leave the kernel's
        limit alone this once (it may be the agent's lift for a spawn)."""
        soft, hard = seen
        bound_soft, bound_hard = self.bound
        if hard != bound_hard:
            # The ceiling is a soft limit and the agent lifts only the soft one: a new
            # hard limit is the user's (lowered; raised only where they may).
            bound_hard = hard
            if _num(bound_soft) > _num(hard):
                bound_soft = hard
            self.bound = (bound_soft, bound_hard)
        if self._is_ours(soft):
            self._raised = None
            return True
        if self.current is None or _num(soft) < _num(bound_soft):
            # Lowered by the user (a lower limit is never wrong to keep), or anything
            # there before our first ceiling.
            self.bound = (soft, bound_hard)
            self._raised = None
            return True
        # At or above the bound: the agent's lift while the kernel starts a process,
        # undone within microseconds, or the user's own. Left alone for one sample, so
        # the spawn's child starts with it; still there at the next, it is the user's.
        if self._raised != soft:
            self._raised = soft
            return False
        self._raised = None
        self.bound = (soft, bound_hard)
        return True

    def _clamp(self, ceiling: int) -> int:
        for bound in self.bound:  # never above what the user or the system set
            if bound != resource.RLIM_INFINITY:
                ceiling = min(ceiling, bound)
        return ceiling

    def _set(self, ceiling: int, seen: Limits) -> None:
        for _ in range(2):  # once more if the user set a limit meanwhile
            limits = (self._clamp(ceiling), self.bound[1])
            try:
                old = resource.prlimit(self.pid, resource.RLIMIT_DATA, limits)
            except (OSError, ValueError) as exc:
                # The user lowered the hard limit since we read it: only a privileged
                # supervisor may raise it again (and must not). From what is there now.
                now = self._read()
                if now is None or now[1] == self.bound[1]:
                    self._off(exc)
                    return
                self._settle(now)
                seen = now
                continue
            self.current = limits[0]
            if _num(limits[0]) < _num(self.bound[0]):  # the bound is the user's, not ours
                self._ours.append(limits[0])
            if old == seen:
                return
            # Set between our read and our write (microseconds): the user's limit, or
            # the agent's lift for a spawn, whose child must not get the ceiling.
            bound = self.bound
            if not self._settle(old):
                self._write(old)
                return
            if self.bound == bound:
                return  # one of ours
            seen = limits

    def _read(self) -> Limits | None:
        try:
            return resource.prlimit(self.pid, resource.RLIMIT_DATA)
        except (OSError, ValueError) as exc:
            self._off(exc)
            return None

    def _write(self, limits: Limits) -> Limits | None:
        """Set the kernel's limits; the ones they replaced (None when it failed)."""
        try:
            return resource.prlimit(self.pid, resource.RLIMIT_DATA, limits)
        except (OSError, ValueError) as exc:
            self._off(exc)
            return None

    def _off(self, exc: Exception) -> None:
        # The kernel is gone, or we may not change its limits: the threshold layer
        # still works, and this one stays off.
        self.error = str(exc)
        self.current = None
