"""Memory sampling: fast while a cell runs, slow while the kernel idles."""

from __future__ import annotations

import os
import time

from ..agent.protocol import DUMPS, State, StateFile, guard_signal, poke
from ..probe import procfs
from ..probe.base import MemorySource
from ..probe.files import Reader
from .children import ChildWatch
from .guard import Guard
from .session import Session

BUSY_INTERVAL = 0.02  # a cell has been running for a while (the agent says so)
# A cell younger than this is sampled at YOUNG_INTERVAL: most cells end within it, and
# sampling every cell of a burst at full speed costs the kernel CPU on small machines.
# The agent records a young cell's line itself, and cgroup v1 wakes us at every mark.
YOUNG_CELL = 0.1
YOUNG_INTERVAL = 0.05
# Near the memory guard's threshold a short cell can cross it between two samples: look
# every few ms while a cell runs there (a sample costs the supervisor about 50 µs).
NEAR_INTERVAL = 0.002
NEAR_BUSY_INTERVAL = 0.01
IDLE_INTERVAL = 1.0  # the kernel waits for the user, however full memory is
BLIND_INTERVAL = 0.25  # no agent (non-Python kernels): we cannot tell busy from idle
# The agent pokes us when a cell starts; we look this much later. Most cells are over
# by then, and a look at an idle kernel costs one read of the state file, where a
# sample at every cell start would cost a few per cent of a trivial cell's round trip.
CELL_LOOK = 0.01
# The agent pokes at most every POKE_GAP (agent/recorder.py): for BURST after a poke,
# cells may start unannounced, so an idle kernel is looked at every BURST_LOOK (near
# the guard's threshold, NEAR_BUSY_INTERVAL) instead of every IDLE_INTERVAL. 20 ms, not
# the 50 ms of the poke gap: an unannounced cell that fills memory at full speed must
# not go unseen much longer than an announced one (CELL_LOOK).
BURST = 1.0
BURST_LOOK = 0.02
# Fractions of the limit at which the agent is asked for a stack dump, so that the
# allocating line is on disk before the OOM killer's SIGKILL. A mark re-arms once
# usage falls this far below it.
MARKS = (0.5, 0.75, 0.9, 0.95)
REARM = 0.1
# The children of the kernel are listed this often (in samples); the kernel's own
# RSS is read every time.
TREE_EVERY = 10


class Sampler:
    def __init__(
        self,
        source: MemorySource,
        session: Session,
        kernel_pid: int,
        started: float,
        dump_signal: int | None,
    ) -> None:
        self.source = source
        self.session = session
        self.kernel_pid = kernel_pid
        self.started = started  # time.monotonic() at the kernel's start
        self.dump_signal = dump_signal
        self.guard: Guard | None = None  # set by the supervisor for agent kernels
        self.guard_signal = guard_signal() if dump_signal is not None else None
        self.state: StateFile | None = None
        # The agent's watcher thread sleeps until a look finds a cell still running.
        self.watch_fd: int | None = None
        self._watched_seq: int | None = None
        self.last_state = State()
        self.peak_counted = 0
        self.last_counted = 0
        self.peak_kernel = 0
        self.last_kernel = 0
        self._children_rss = 0
        self._children = 0
        self.child_watch = ChildWatch(source, session, kernel_pid)
        self._count = 0
        self._armed = [True] * len(MARKS)
        self.next_due = 0.0
        self._idle_due = 0.0
        self._poked_at = -BURST
        self._statm = Reader(f"/proc/{kernel_pid}/statm")

    def attach_state(self, path: str) -> None:
        if self.state is None and os.path.exists(path):
            try:
                self.state = StateFile(path, writable=False)
            except (OSError, ValueError):
                self.state = None
                return
            if self.guard is not None and self.guard.ceiling is not None:
                self.guard.ceiling.starts = self.state.thread_starts

    def interval(self) -> float:
        if self.state is None:
            return BLIND_INTERVAL
        near = self._near_guard()
        if not self.last_state.busy:
            return self._idle_interval(near)
        started = self.last_state.started
        young = started is not None and time.time() - started < YOUNG_CELL
        if near:
            return NEAR_INTERVAL if young else NEAR_BUSY_INTERVAL
        return YOUNG_INTERVAL if young else BUSY_INTERVAL

    def _near_guard(self) -> bool:
        """The last sample was near the guard's threshold (the guard being on)."""
        guard = self.guard
        return guard is not None and guard.enabled and self.last_counted >= guard.near

    def _idle_interval(self, near: bool) -> float:
        if time.monotonic() - self._poked_at < BURST:
            return NEAR_BUSY_INTERVAL if near else BURST_LOOK
        return IDLE_INTERVAL

    def _young(self) -> float:
        """How long the running cell has left before it is CELL_LOOK old (0 if none)."""
        state = self.last_state
        if not state.busy or state.started is None:
            return 0.0
        return max(0.0, CELL_LOOK - (time.time() - state.started))

    def _wake_watcher(self, state: State) -> None:
        """Once a cell has run for CELL_LOOK, the agent's watcher ticks until it ends.
        A younger cell at a burst's look is most likely over within microseconds."""
        if not state.busy or state.seq == self._watched_seq or state.started is None:
            return
        if time.time() - state.started >= CELL_LOOK:
            self._watched_seq = state.seq
            self.watch_fd = poke(self.watch_fd, b"w")

    def poked(self, data: bytes) -> None:
        """The agent writes b"r" once it is ready, b"c" as a cell starts and b"e" as
        it ends."""
        if b"r" in data:
            self.sample(force=True)  # the ceiling, before the first cell
        if b"k" in data:
            # A cell ended on a broken pool (BrokenProcessPool): the agent waits to
            # hear which worker died of what, so look now.
            self.sample(force=True, tree=True)
        near = self._near_guard()
        if near:
            # Near the guard, memory between two cells decides whether the next one
            # grew it past the threshold: read it now, not at the next tick.
            self.sample(force=True)
        if b"c" in data:
            self._poked_at = time.monotonic()
            look = NEAR_INTERVAL if near else CELL_LOOK
            self.next_due = min(self.next_due, time.monotonic() + look)

    def sample(self, force: bool = False, tree: bool = False) -> None:
        now = time.monotonic()
        if self.state is not None:
            state = self.state.read()
            if state is not None:
                self.last_state = state
                self._wake_watcher(state)
            if not force and not self.last_state.busy and now < self._idle_due:
                # Woken for a cell that has already ended: keep the idle rhythm (in a
                # burst of cells, the burst's).
                self.next_due = min(self._idle_due, now + self._idle_interval(self._near_guard()))
                return
            young = self._young()
            if not force and young and not self._near_guard():
                # A burst's look at a cell younger than CELL_LOOK: most likely over
                # within microseconds. Sampled when it is CELL_LOOK old, as a cell the
                # agent announced is (a whole sample each time cost the supervisor
                # more than the rest of a trivial cell's looks together).
                self.next_due = now + young
                return
        own, data = procfs.statm_sizes(self._statm.read()) or (0, 0)
        if not own:
            # The kernel is exiting (a zombie's statm reads zeros) and its memory is
            # being freed: a sample now would end the timeline on a false low.
            self.next_due = now + self.interval()
            return
        counted = self.source.counted()
        # While a cell runs, every time: a subprocess or a pool's worker can start and
        # be OOM-killed within a few looks (~70 µs a listing).
        busy = self.last_state.busy
        listed = tree or busy or self._count % TREE_EVERY == 0 or self._children
        if listed:
            # Listed every time while the kernel has children (their memory moves
            # fast, e.g. a pipeline of tools, and one may die), every TREE_EVERY
            # samples otherwise.
            children = procfs.tree(self.kernel_pid)[1:]
            sizes = [procfs.rss_bytes(p) or 0 for p in children]
            self._children_rss, self._children = sum(sizes), len(children)
        self._count += 1
        kernel = own + self._children_rss
        if counted is not None and self.source.limit.kind != "system":
            # Summed RSS counts shared pages once per process; the kernel's processes
            # cannot hold more than their cgroup counts.
            kernel = min(kernel, counted)
        self.last_kernel = kernel
        if listed and (children or busy or self.child_watch.known or self.child_watch.crashes()):
            context = {
                "tree_bytes": kernel,
                "counted_bytes": counted,
                "seq": self.last_state.seq if self.last_state.busy else None,
                "agent": self.state is not None,
            }
            self.child_watch.update(children, sizes, context)
        self.peak_kernel = max(self.peak_kernel, kernel)
        if counted is not None:
            self.peak_counted = max(self.peak_counted, counted)
            self.last_counted = counted
            self.session.sample(now - self.started, counted, kernel)
            self._check_marks(counted)
            guard = self.guard
            if guard is not None and self.state is not None:
                # Once the agent has written its state record, it has filled glibc's
                # stack cache: before that, a tight ceiling refused the stacks of
                # libzmq's threads as the kernel started (SIGABRT at a 64 MiB limit).
                # No cell runs before it: IPython loads the agent before it replies.
                guard.follow(data, max(0, counted - self.source.active_file))
                if guard.check(self.last_state, counted, self.kernel_pid, self.guard_signal):
                    self.session.event("guard", usage=counted, seq=self.last_state.seq)
        if self.child_watch.pending:
            self.child_watch.flush()
        self.next_due = now + self.interval()
        self._idle_due = now + IDLE_INTERVAL

    def _check_marks(self, counted: int) -> None:
        fraction = counted / max(1, self.source.limit.limit_bytes)
        for i, mark in enumerate(MARKS):
            if self._armed[i] and fraction >= mark:
                self._armed[i] = False
                self.request_dump(f"{mark:.0%} of the limit")
            elif not self._armed[i] and fraction < mark - REARM:
                self._armed[i] = True

    def request_dump(self, why: str) -> bool:
        """Ask the agent for a stack dump, if its handler is in place.

        An uncaught real-time signal would kill the kernel, so SigCgt is checked
        every time (a read of /proc/PID/status; dumps are rare)."""
        if self.dump_signal is None:
            return False
        if not procfs.catches(self.kernel_pid, self.dump_signal):
            return False
        try:
            size = os.path.getsize(os.path.join(self.session.directory, DUMPS))
        except OSError:
            size = 0
        if not os.path.exists(f"/proc/{self.kernel_pid}"):
            return False
        from .signals import signal_thread

        # To the main thread, where cells run: the agent's dump covers that thread only.
        signal_thread(self.kernel_pid, self.kernel_pid, self.dump_signal)
        self.session.event(
            "dump", why=why, offset=size, signal=procfs.signal_name(self.dump_signal)
        )
        return True
