"""The memory guard's supervisor half: notice a cell growing past the threshold.

A kernel that merely holds a lot must keep working, so the guard trips on growth
during a cell, not on a full kernel: the running cell must have added at least
GROWTH_MIN since its first sample, and memory must be past the threshold. The agent
(``kernel_doctor.agent.guard``) turns the signal into a MemoryError in that cell.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from ..agent.protocol import GuardInfo, GuardTrip, State, read_meta, write_guard_trip, write_meta
from ..agent.settings import GUARD_DEFAULT, guard_bytes, guard_setting
from ..probe import procfs
from ..probe.base import MemoryLimit
from .ceiling import Ceiling

ENV_GUARD = "KERNEL_DOCTOR_GUARD"
DEFAULT = GUARD_DEFAULT
# Growth within the cell that counts as the cell's doing: small cells of a kernel
# that holds most of its limit never get near it.
GROWTH_MIN_SHARE = 0.02
GROWTH_MIN_BYTES = 16 * 1024**2
RESEND = 0.5  # seconds: a signal that landed outside the cell's code is sent again
TRIES = 6
# Within this share of the limit below the threshold, the supervisor samples the moment
# a cell starts or ends, so each cell's growth counts from exactly its start.
NEAR_SHARE = 0.25


def threshold(setting: str | None, limit: int) -> tuple[int, str] | None:
    """(bytes, the setting as kernel-doctor writes it) from "90%", "1.5G" or "off"
    (``agent.settings`` reads it); None when off. An unreadable setting falls back to
    the default, with a warning where it was given: the guard must not vanish."""
    try:
        text = guard_setting(setting or DEFAULT)
    except ValueError:
        text = DEFAULT
    found = guard_bytes(text, limit)
    return None if found is None else (found, text)


class Guard:
    def __init__(
        self,
        setting: str | None,
        limit: MemoryLimit,
        session_dir: str,
        ceiling: Ceiling | None = None,
    ) -> None:
        self.limit = limit
        self.ceiling = ceiling  # the allocation layer, where the kernel's rlimit is ours
        self.configure(setting)
        self.session_dir = session_dir
        self.growth_min = max(GROWTH_MIN_BYTES, int(limit.limit_bytes * GROWTH_MIN_SHARE))
        self.near = max(0, self.bytes - int(limit.limit_bytes * NEAR_SHARE))
        self._seq: int | None = None
        self._base = 0
        self._last: int | None = None
        self._sent = 0.0
        self._tries = 0
        self._data = self._held = 0  # the kernel's mappings and memory at the last sample
        self._holding: int | None = None  # the stopped cell whose ceiling is held

    def configure(self, setting: str | None) -> None:
        self.setting = setting
        found = threshold(setting, self.limit.limit_bytes)
        self.enabled = found is not None
        self.bytes, self.text = found if found is not None else (0, "off")
        self.near = max(0, self.bytes - int(self.limit.limit_bytes * NEAR_SHARE))
        if not self.enabled and self.ceiling is not None:
            self.ceiling.release()

    def wake_mark(self) -> int:
        """Where a cgroup-v1 usage event should wake the supervisor: a little past the
        threshold (usage includes the file cache the guard does not count), since
        between there and the limit a fast loop may have only a few steps left."""
        limit = self.limit.limit_bytes
        return min(self.bytes + int(limit * 0.01), int(limit * 0.99))

    def describe(self) -> GuardInfo:
        ceiling = self.ceiling
        return GuardInfo(
            enabled=self.enabled,
            threshold=self.text,
            threshold_bytes=self.bytes,
            allocation=ceiling is not None,
            reserve_bytes=ceiling.reserve if ceiling is not None else None,
            ceiling_bytes=ceiling.current if ceiling is not None else None,
            allocation_error=ceiling.error if ceiling is not None else None,
        )

    def follow(self, data_bytes: int, held: int) -> None:
        """Move the allocation layer's ceiling with the kernel (each sample); ``held``:
        what the limit counts that reclaim cannot give back (no file cache)."""
        self._data, self._held = data_bytes, held
        if self.enabled and self.ceiling is not None:
            self.ceiling.update(data_bytes, held)

    def _hold(self, seq: int | None) -> None:
        """After a trip, until the stopped cell is over, the ceiling keeps half of the
        room left: the cell's other threads (a ThreadPoolExecutor's, pandas'
        read_csv's) go on allocating while its main thread unwinds, and past that
        their allocations fail as MemoryErrors in those threads instead of growing
        the kernel into the OOM killer (benchmarks/guard.py: pd-read-csv at 4 GiB)."""
        ceiling = self.ceiling
        if ceiling is None:
            return
        if seq is None:
            ceiling.hold = None
        else:
            room = max(0, self.limit.limit_bytes - self._held)
            ceiling.hold = self._data + room // 2
        self._holding = seq
        ceiling.update(self._data, self._held)

    def check(self, state: State, counted: int, pid: int, signum: int | None) -> bool:
        """Called at each sample; True when it signalled the kernel."""
        wanted = state.guard
        if wanted is not None and wanted != self.setting:
            self.configure(wanted)  # %doctor guard, from the agent's state record
            self._write_meta()
        last, self._last = self._last, counted
        if self._holding is not None and (not state.busy or state.seq != self._holding):
            self._hold(None)  # the stopped cell is over
        if not self.enabled or signum is None:
            return False
        if not state.busy or state.seq is None:
            return False
        seq = state.seq
        if seq != self._seq:
            # The cell's growth counts from the sample before its first: near the
            # threshold that one was taken as the previous cell ended (the agent pokes
            # us at each cell's start and end), and the cell's own first sample may
            # come after a fast fill. Far below the threshold, a stale base is harmless.
            base = counted if last is None else min(last, counted)
            self._seq, self._base, self._sent, self._tries = seq, base, 0.0, 0
        if counted < self.bytes or counted - self._base < self.growth_min:
            return False
        now = time.monotonic()
        if self._tries >= TRIES or now - self._sent < RESEND:
            return False
        if not procfs.catches(pid, signum):
            return False
        trip = GuardTrip(
            seq=seq,
            usage_bytes=counted,
            limit_bytes=self.limit.limit_bytes,
            limit_source=self.limit.source,
            threshold_text=self.text,
            threshold_bytes=self.bytes,
        )
        try:
            write_guard_trip(self.session_dir, trip)
            os.kill(pid, signum)
        except OSError:
            return False
        if self._tries == 0:
            self._hold(seq)
        self._sent, self._tries = now, self._tries + 1
        return True

    def _write_meta(self) -> None:
        """Keep meta.json's guard entry current, for %doctor and the report."""
        meta = read_meta(self.session_dir)
        if meta is not None:
            try:
                write_meta(self.session_dir, dataclasses.replace(meta, guard=self.describe()))
            except OSError:
                pass


def make_guard(setting: str | None, limit: MemoryLimit, session_dir: str, pid: int) -> Guard:
    """The guard for kernel ``pid``, with its allocation layer where RLIMIT_DATA counts
    as measured (Linux) and we may set the kernel's limits."""
    ceiling = None
    if sys.platform.startswith("linux"):
        try:
            ceiling = Ceiling(pid, limit.limit_bytes)
        except (OSError, ValueError):
            ceiling = None  # the threshold layer still works
    return Guard(setting, limit, session_dir, ceiling)
