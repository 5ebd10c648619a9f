"""Facts read off the evidence that both the cause (causes.py) and the advice
(advice.py) depend on: here, so that neither imports the other."""

from __future__ import annotations

from ..evidence import Evidence
from .stacks import pick_thread, runaway_recursion


def last_dump_recursion(ev: Evidence) -> str | None:
    """The recursing function, when the last on-demand dump shows runaway recursion
    (pure-Python recursion under a raised limit lives on the heap and ends as OOM)."""
    if not ev.dumps:
        return None
    dump = pick_thread(ev.dumps[-1], ev.main_thread)
    found = runaway_recursion(dump) if dump else None
    return found[0] if found else None


def oom_share(ev: Evidence) -> float | None:
    """The kernel's share of what the limit counted at its peak."""
    mem = ev.memory
    if not mem.peak_bytes or not mem.kernel_peak_bytes:
        return None
    return min(1.0, mem.kernel_peak_bytes / mem.peak_bytes)
