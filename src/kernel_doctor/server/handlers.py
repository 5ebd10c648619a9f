"""REST endpoints, behind Jupyter's normal authentication and authorization:

- ``GET /kernel-doctor/api/reports``: the stored reports, newest first (summaries);
- ``GET /kernel-doctor/api/reports/ID``: one report, whole;
- ``GET /kernel-doctor/api/kernels``: this server's supervised kernels, live;
- ``GET /kernel-doctor/api/kernels/KERNEL_ID/where``: a look inside one (as
  ``kernel-doctor where`` takes it).

A report is served only if it is this server's user's own regular file (read with
``read_private``, as every stored report is) and a valid report (``Report.from_json``):
any other file in the reports folder is left out of the list and answered with 404,
and the server's log says why, once per file.
"""

from __future__ import annotations

import json
import os
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from ..paths import reports_dir
from ..reports.history import once, read_document, skipped, stored_reports
from ..reports.model import BadReport, Report
from .state import kernel_states

ID = r"(?P<report_id>[0-9]{8}-[0-9]{6}-[0-9]+(?:-[0-9]+)?)"
KERNEL_ID = r"(?P<kernel_id>[0-9a-fA-F-]{8,64})"
SUMMARY_KEYS = ("id", "created", "outcome", "cause", "summary", "cell", "line", "kernel")


class _Base(APIHandler):
    auth_resource = "kernels"  # reports describe kernels; reading them is reading kernels

    def write_json(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))


def report_summary(report: Report) -> dict[str, Any]:
    """What the list gives of each report: enough to match it to a kernel and name it."""
    doc = report.to_json()
    summary = {k: doc.get(k) for k in SUMMARY_KEYS}
    memory = doc["memory"]
    summary["memory"] = {k: memory[k] for k in ("peak_bytes", "limit_bytes", "limit_source")}
    return summary


class ReportsHandler(_Base):
    @web.authenticated
    @authorized
    def get(self) -> None:
        warn = once(lambda text: self.log.warning("kernel-doctor: %s", text))
        self.write_json([report_summary(r) for r in stored_reports(warn)])


class ReportHandler(_Base):
    @web.authenticated
    @authorized
    def get(self, report_id: str) -> None:
        path = os.path.join(reports_dir(), f"{report_id}.json")
        if not os.path.lexists(path):
            raise web.HTTPError(404, f"no report {report_id}")
        try:
            _, document = read_document(path)
        except BadReport as exc:
            once(lambda text: self.log.warning("kernel-doctor: %s", text))(skipped(path, exc))
            raise web.HTTPError(404, f"no report {report_id}") from None
        # Served as stored, once valid: keys a newer kernel-doctor added reach the
        # frontend too.
        self.write_json(document)


class KernelsHandler(_Base):
    @web.authenticated
    @authorized
    def get(self) -> None:
        self.write_json(kernel_states(set(self.kernel_manager.list_kernel_ids())))


class WhereHandler(_Base):
    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        from tornado.ioloop import IOLoop

        from .._errors import KernelDoctorError
        from ..diagnosis.hang import describe
        from ..live import ask

        states = kernel_states({kernel_id})
        if not states:
            raise web.HTTPError(404, f"no supervised kernel {kernel_id}")
        try:  # the look takes 0.3–0.7 s: off the event loop
            look = await IOLoop.current().run_in_executor(None, ask, states[0]["session_dir"])
        except KernelDoctorError as exc:
            raise web.HTTPError(503, str(exc)) from exc
        look["summary"] = describe(look)
        self.write_json(look)


def setup_handlers(web_app: Any) -> None:
    base = url_path_join(web_app.settings["base_url"], "kernel-doctor", "api")
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "reports") + "/?", ReportsHandler),
            (url_path_join(base, "reports", ID), ReportHandler),
            (url_path_join(base, "kernels") + "/?", KernelsHandler),
            (url_path_join(base, "kernels", KERNEL_ID, "where"), WhereHandler),
        ],
    )
