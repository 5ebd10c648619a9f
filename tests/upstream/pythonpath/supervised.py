"""A pytest plugin, ``-p supervised`` with this folder on PYTHONPATH: every kernel the
tests launch through jupyter_client's ``LocalProvisioner`` runs under the supervisor
(``kernel_doctor_upstream``), in the tests' own process and in the Jupyter applications
they start as subprocesses (``sitecustomize``, through PYTHONPATH).

At the end the session says how many launches were wrapped, and fails if there were
none: a run that supervised nothing proves nothing.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from kernel_doctor_upstream import LAUNCHES, launches, wrap_on_import

HERE = os.path.dirname(os.path.abspath(__file__))
_wrapped = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get(LAUNCHES):
        fd, path = tempfile.mkstemp(prefix="kernel-doctor-launches-")
        os.close(fd)
        os.environ[LAUNCHES] = path
    search = [part for part in os.environ.get("PYTHONPATH", "").split(os.pathsep) if part]
    if HERE not in search:
        os.environ["PYTHONPATH"] = os.pathsep.join([HERE, *search])
    wrap_on_import()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    wrapped = session.config.stash[_wrapped] = len(launches())
    if wrapped == 0 and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    wrapped = terminalreporter.config.stash.get(_wrapped, 0)
    listed = f"(listed in {os.environ.get(LAUNCHES)})"
    if wrapped:
        terminalreporter.write_line(
            f"kernel-doctor: {wrapped} kernel launches ran under the supervisor {listed}"
        )
    else:
        terminalreporter.write_line(
            f"kernel-doctor: no kernel launch ran under the supervisor {listed}", red=True
        )
