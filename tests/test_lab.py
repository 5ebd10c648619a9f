"""The JupyterLab extension in a real browser: a real JupyterLab (in a 400 MB memory
cgroup) with the supervised kernelspec, Debian's chromium driven by Playwright. A cell
that exhausts memory must give the notification with the diagnosis, the failed-cell
marking and the status-bar memory figure. Screenshots of each are kept in
``test-artifacts/lab/``."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import remove_cgroup_tree
from kernel_doctor._errors import CgroupUnavailable
from kernel_doctor.probe.create import make_limited_cgroup
from test_server import TWIN, free_port, stop_server, write_twin_kernelspec

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

LIMIT = 400 * 1024**2
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "lab"
# Chromium's background connections are refused on a closed network, many at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def lab(cgroup_parent: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    try:
        cgroup = make_limited_cgroup(LIMIT)
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup for the server: {exc}")
    if cgroup.path is None:
        pytest.skip("memory cgroups only through systemd-run here; the server needs a directory")
    process = None
    try:
        root = tmp_path_factory.mktemp("lab")
        dirs = {n: root / n for n in ("data", "config", "runtime", "notebooks", "ipython")}
        for path in dirs.values():
            path.mkdir()
        write_twin_kernelspec(dirs["data"])
        env = dict(os.environ)
        env.update(
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            IPYTHONDIR=str(dirs["ipython"]),
            JUPYTER_PLATFORM_DIRS="1",
        )
        # The kernelspec dir first; the installed extensions come from sys.prefix.
        env["JUPYTER_PATH"] = str(dirs["data"])
        env.pop("KERNEL_DOCTOR_CGROUP_PARENT", None)
        token, port = secrets.token_hex(16), free_port()
        procs = Path(cgroup.path, "cgroup.procs")

        def join_cgroup() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        log = root / "lab.log"
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jupyterlab",
                    "--allow-root",
                    "--ip=127.0.0.1",
                    f"--port={port}",
                    "--ServerApp.port_retries=0",
                    f"--IdentityProvider.token={token}",
                    "--ServerApp.open_browser=False",
                    f"--ServerApp.root_dir={dirs['notebooks']}",
                    "--LabApp.news_url=",
                    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=join_cgroup,
            )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.2)
        yield {"base": base, "token": token, "root": dirs["notebooks"], "log": log}
    finally:
        if process is not None:
            stop_server(process)
        remove_cgroup_tree(cgroup.path)


def write_notebook(root: Path, name: str, cells: list[str]) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": TWIN, "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(root / name))


def test_an_oom_death_in_jupyterlab(lab: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # One memset past the 400 MB limit: it fits under the guard's allocation ceiling and
    # runs as one C call, so the kernel really dies, as without kernel-doctor.
    write_notebook(lab["root"], "oom.ipynb", ["held = 1", "data = bytearray(700 * 1024**2)"])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{lab['base']}/lab/tree/oom.ipynb?reset&token={lab['token']}")
            # The kernel is up and idle; the status bar shows its memory against 400 MiB.
            news = page.locator(".Toastify__toast").filter(has_text="Jupyter news")
            with contextlib.suppress(sync_api.Error):  # JupyterLab's news prompt, if any
                news.get_by_role("button", name="No").click(timeout=5_000)
            status = page.locator(".kd-memory")
            status.filter(has_text="/ 400 MiB").wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "1-status-bar.png"))
            assert status.inner_text().startswith("Mem: ")

            page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(0).click()
            page.keyboard.press("Shift+Enter")  # held = 1
            page.keyboard.press("Shift+Enter")  # the memset: the kernel dies
            toast = page.locator(".Toastify__toast").filter(has_text="Out of memory in cell")
            toast.wait_for(timeout=60_000)
            # JupyterLab's own modal says only that the kernel "appears to have died".
            dialog = page.locator(".jp-Dialog").filter(has_text="appears to have died")
            dialog.wait_for(timeout=10_000)
            dialog.get_by_role("button", name="Ok").click()
            page.wait_for_timeout(1000)  # the toast slides in
            text = toast.inner_text()
            assert "Out of memory in cell [2], line 1" in text, text
            assert "of the 400 MiB limit" in text, text
            page.screenshot(path=str(ARTIFACTS / "2-notification.png"))

            failed = page.locator(".jp-Cell.kd-failed-cell")
            failed.wait_for(timeout=10_000)
            assert failed.count() == 1
            cell_text = failed.inner_text()
            assert "bytearray(700 * 1024**2)" in cell_text
            # An error output (JupyterLab shows an error's traceback, on a red ground).
            error = failed.locator('.jp-OutputArea-output[data-mime-type*="stderr"]')
            assert "Out of memory in cell [2], line 1" in error.inner_text()
            failed.screenshot(path=str(ARTIFACTS / "3-failed-cell.png"))

            toast.get_by_role("button", name="Details").click()
            report = page.locator(".kd-report")
            report.wait_for(timeout=10_000)
            assert "What to do" in report.inner_text()
            page.screenshot(path=str(ARTIFACTS / "4-details.png"))
        finally:
            browser.close()
    assert all(
        (ARTIFACTS / n).stat().st_size > 0 for n in ("1-status-bar.png", "2-notification.png")
    )
    log = lab["log"].read_text(errors="replace")
    assert "kernel-doctor: server extension loaded" in log, log[-3000:]


def test_a_guard_trip_is_notified_and_the_kernel_lives(lab: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    grow = "chunks = []\nfor i in range(100):\n    chunks.append(bytearray(10 * 1024**2))"
    write_notebook(lab["root"], "guard.ipynb", [grow, "del chunks\nprint('alive')"])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{lab['base']}/lab/tree/guard.ipynb?reset&token={lab['token']}")
            page.locator(".kd-memory").filter(has_text="/ 400 MiB").wait_for(timeout=60_000)
            page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(0).click()
            page.keyboard.press("Shift+Enter")
            toast = page.locator(".Toastify__toast").filter(has_text="memory guard stopped")
            toast.wait_for(timeout=60_000)
            assert "stopped this cell (In [1], line 3)" in toast.inner_text()
            page.keyboard.press("Shift+Enter")  # the next cell: same kernel, still alive
            page.locator(".jp-OutputArea-output").filter(has_text="alive").wait_for(timeout=30_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "5-guard-trip.png"))
        finally:
            browser.close()
