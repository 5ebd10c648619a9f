"""The cause of a death for every client of the server, not only our lab extension.

jupyter_server's kernel model has a ``reason`` ("the reason for the last failure
against the kernel"): ``GET /api/kernels/<id>`` and the sessions API carry it, and
clients that never load our extension (VS Code attached to a server, scripts, RTC
peers) read it. When a kernel of this server dies under a supervisor, its reason
becomes the stored report's summary and where the full report is.

Who calls what: the kernel's restarter calls ``check`` the moment it sees the death
(the supervisor is the launched process and exits only after storing its report, so
the report is there); a poll every POLL seconds hooks kernels started since, and
catches a report the callback missed. jupyter_server clears the reason itself when a
kernel is restarted by hand.
"""

from __future__ import annotations

import time
from typing import Any

from ..reports.history import new_stored, once
from ..reports.model import Report
from .state import kernel_id_of

POLL = 2.0


def reason_text(report: Report) -> str:
    """ "kernel-doctor: Out of memory at In [2], line 1: … Full report: kernel-doctor
    show ID" """
    return f"kernel-doctor: {report.summary} Full report: kernel-doctor show {report.id}"


class Reasons:
    def __init__(self, kernel_manager: Any, log: Any = None) -> None:
        self.kernel_manager = kernel_manager
        self.log = log
        self.started = time.time()
        self.seen: set[str] = set()  # report paths read so far
        self.hooked: set[str] = set()  # kernel ids whose restarter calls us back
        new_stored(self.seen)  # reports of kernels that died before this server started

    def poll(self) -> None:
        try:
            self._hook()
            self.check()
        except Exception:
            pass  # a reason is worth less than a server that keeps serving

    def _hook(self) -> None:
        ids = set(self.kernel_manager.list_kernel_ids())
        for kernel_id in ids - self.hooked:
            self.kernel_manager.add_restart_callback(kernel_id, self._on_restart, "restart")
        self.hooked = ids

    def _on_restart(self) -> None:
        try:
            self.check()
        except Exception:
            pass  # called from the restarter: never break the restart

    def check(self) -> None:
        """Set the reason of each kernel of this server with a new stored report."""
        log = self.log
        warn = once(lambda text: log.warning("kernel-doctor: %s", text)) if log else None
        ids = set(self.kernel_manager.list_kernel_ids())
        for report in new_stored(self.seen, warn):
            kernel = report.kernel
            if kernel is None or (kernel.ended or 0) < self.started:
                continue
            kernel_id = kernel_id_of(kernel.connection_file)
            if kernel_id is not None and kernel_id in ids:
                self.kernel_manager.get_kernel(kernel_id).reason = reason_text(report)


def start_reasons(serverapp: Any) -> None:
    from tornado.ioloop import PeriodicCallback

    reasons = Reasons(serverapp.kernel_manager, serverapp.log)
    callback = PeriodicCallback(reasons.poll, POLL * 1000)
    callback.start()
    serverapp.web_app.settings["kernel_doctor_reasons"] = callback  # kept alive
