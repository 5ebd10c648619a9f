"""Fleet metrics, registered with prometheus_client's default registry, which
jupyter_server's own ``/metrics`` endpoint serves: no collector of our own.

Updated every POLL seconds from disk: reports stored since the server started (deaths
by cause), guard trips and ignored interrupts in live sessions, and each supervised
kernel's memory against its limit.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from prometheus_client import Counter, Gauge

from ..agent.protocol import read_events
from ..diagnosis.causes import CAUSES

CHILD_CAUSES = ("out_of_memory", "native_crash")  # what supervisor/children.py reports

POLL = 5.0

DEATHS = Counter(
    "kernel_doctor_deaths", "Kernel deaths diagnosed by kernel-doctor, by cause", ["cause"]
)
CHILD_DEATHS = Counter(
    "kernel_doctor_child_deaths",
    "Children of supervised kernels (pool workers, subprocesses) killed or crashed, by cause",
    ["cause"],
)
GUARD_TRIPS = Counter("kernel_doctor_guard_trips", "Cells stopped by kernel-doctor's memory guard")
IGNORED_INTERRUPTS = Counter(
    "kernel_doctor_ignored_interrupts", "Interrupts that did not stop the running cell"
)
SUPERVISED = Gauge("kernel_doctor_supervised_kernels", "Supervised kernels of this server")
MEMORY = Gauge(
    "kernel_doctor_kernel_memory_bytes",
    "What the memory limit counts for a supervised kernel",
    ["kernel_id"],
)
LIMIT = Gauge(
    "kernel_doctor_kernel_memory_limit_bytes",
    "The memory limit that applies to a supervised kernel",
    ["kernel_id"],
)
# Each cause's series exists from the start, at 0: Prometheus's increase() and rate()
# need a sample before the first death to count it (a series born at 1 reads as 0).
for _cause in CAUSES:
    DEATHS.labels(cause=_cause)
for _cause in CHILD_CAUSES:
    CHILD_DEATHS.labels(cause=_cause)


class Poller:
    def __init__(self, kernel_manager: Any, log: Any = None) -> None:
        self.kernel_manager = kernel_manager
        self.log = log  # the server's logger: where stored files that are not reports are named
        self.started = time.time()
        self.seen_reports: set[str] = set()  # report paths read so far
        self.guard_events: dict[str, int] = {}
        self.ignored: set[tuple[str, Any]] = set()
        self.labelled: set[str] = set()

    def poll(self) -> None:
        try:
            self._reports()
            self._kernels()
        except Exception:
            pass  # metrics must never disturb the server

    def _reports(self) -> None:
        # Through read_private and Report.from_json: another user's file, or one that
        # is not a report, is not counted (and the server's log says so, once).
        from ..reports.history import new_stored, once

        log = self.log
        warn = once(lambda text: log.warning("kernel-doctor: %s", text)) if log else None
        for report in new_stored(self.seen_reports, warn):
            if report.outcome == "child_died":  # the kernel lived: not a kernel death
                if _epoch(report.created) >= self.started:
                    CHILD_DEATHS.labels(cause=report.cause or "unknown").inc()
                continue
            ended = report.kernel.ended if report.kernel else None
            if ended is not None and ended >= self.started:
                DEATHS.labels(cause=report.cause or "unknown").inc()

    def _kernels(self) -> None:
        from .state import kernel_states

        states = kernel_states(set(self.kernel_manager.list_kernel_ids()))
        SUPERVISED.set(len(states))
        current = set()
        for state in states:
            kernel_id = state["kernel_id"]
            current.add(kernel_id)
            memory = state["memory"]
            if memory["counted_bytes"] is not None:
                MEMORY.labels(kernel_id=kernel_id).set(memory["counted_bytes"])
            if memory["limit_bytes"] is not None:
                LIMIT.labels(kernel_id=kernel_id).set(memory["limit_bytes"])
            trips = _count_guard_events(state["session_dir"])
            before = self.guard_events.get(state["session_dir"], 0)
            if trips > before:
                GUARD_TRIPS.inc(trips - before)
            self.guard_events[state["session_dir"]] = trips
            ignored = state["ignored_interrupt"]
            if ignored and (kernel_id, ignored["seq"]) not in self.ignored:
                self.ignored.add((kernel_id, ignored["seq"]))
                IGNORED_INTERRUPTS.inc()
        for gone in self.labelled - current:  # ended kernels leave no stale series
            for gauge in (MEMORY, LIMIT):
                # A kernel with no reading has no series; older prometheus_clients raise.
                with contextlib.suppress(KeyError):
                    gauge.remove(gone)
        self.labelled = current


def _epoch(created: object) -> float:
    """A report's ``created`` ("%Y-%m-%dT%H:%M:%S%z") in epoch seconds; 0 if unreadable."""
    from datetime import datetime

    try:
        return datetime.strptime(str(created), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return 0.0


def _count_guard_events(session_dir: str) -> int:
    return sum(1 for event in read_events(session_dir) if event.kind == "guard")


def start_metrics(serverapp: Any) -> None:
    from tornado.ioloop import PeriodicCallback

    poller = Poller(serverapp.kernel_manager, serverapp.log)
    poller.poll()
    callback = PeriodicCallback(poller.poll, POLL * 1000)
    callback.start()
    serverapp.web_app.settings["kernel_doctor_metrics"] = callback  # kept alive
