"""The JupyterLab extension in a real browser: a real JupyterLab (in a 400 MB memory
cgroup) with the supervised kernelspec, Debian's chromium driven by Playwright. A cell
that exhausts memory must give the notification with the diagnosis, the failed-cell
marking and the status-bar memory figure, as the one message (JupyterLab's own
"Kernel Restarting" dialog gives way), and Details with the memory plot. A long cell
has its running line marked. Screenshots of each are kept in ``test-artifacts/lab/``."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import CHROMIUM_ARGS
from kernels import unguardable_fill
from test_server import TWIN, Server, running_server

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "lab"


@pytest.fixture(scope="module")
def lab(cgroup_parent: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = (
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    )
    with running_server(tmp_path_factory, "jupyterlab", *extra) as running:
        yield running


def url(lab: Server, notebook: str) -> str:
    return f"http://127.0.0.1:{lab.port}/lab/tree/{notebook}?reset&token={lab.token}"


@contextlib.contextmanager
def opened(lab: Server, notebook: str) -> Iterator[Any]:
    """A fresh headless chromium page with ``notebook`` open in the lab."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url(lab, notebook))
            yield page
        finally:
            browser.close()


def wait_or_say(page: Any, locator: Any, timeout: int, shot: str, what: str) -> None:
    """Wait for ``locator``; if it never comes, keep a screenshot and say what the page
    showed instead (a death? another error? a dialog?)."""
    try:
        locator.wait_for(timeout=timeout)
    except sync_api.TimeoutError:
        page.screenshot(path=str(ARTIFACTS / shot))
        shown = {
            name: page.locator(css).all_inner_texts()
            for name, css in (
                ("outputs", ".jp-OutputArea-output"),
                ("toasts", ".Toastify__toast"),
                ("dialogs", ".jp-Dialog"),
            )
        }
        raise AssertionError(f"{what}; {shown}") from None


def write_notebook(root: Path, name: str, cells: list[str]) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": TWIN, "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(root / name))


def test_an_oom_death_in_jupyterlab(lab: Server) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # One memset of shared memory past the 400 MB limit: the guard's allocation layer
    # does not count it and it runs as one C call, so the kernel really dies.
    write_notebook(lab.root, "oom.ipynb", ["held = 1", unguardable_fill(700)])
    with opened(lab, "oom.ipynb") as page:
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
        page.wait_for_timeout(2000)  # idle: the checkpoint of `held` is written
        page.keyboard.press("Shift+Enter")  # the memset: the kernel dies
        toast = page.locator(".Toastify__toast").filter(has_text="Out of memory at In [2]")
        wait_or_say(page, toast, 60_000, "2-notification-timeout.png", "no OOM toast")
        page.wait_for_timeout(1000)  # the toast slides in; a dialog would be up by now
        # One message, ours: JupyterLab's "Kernel Restarting" modal never shows.
        dialogs = page.locator(".jp-Dialog").all_inner_texts()
        assert dialogs == [], dialogs
        toasts = page.locator(".Toastify__toast").all_inner_texts()
        deaths = [t for t in toasts if "Out of memory" in t or "appears to have died" in t]
        assert len(deaths) == 1, toasts
        text = toast.inner_text()
        assert "Out of memory at In [2], line 1" in text, text
        assert "of the 400 MiB limit" in text, text
        page.screenshot(path=str(ARTIFACTS / "2-notification.png"))

        failed = page.locator(".jp-Cell.kd-failed-cell")
        failed.wait_for(timeout=10_000)
        assert failed.count() == 1
        cell_text = failed.inner_text()
        assert "mmap.mmap(-1, 700 * 1024**2)" in cell_text
        # An error output (JupyterLab shows an error's traceback, on a red ground).
        error = failed.locator('.jp-OutputArea-output[data-mime-type*="stderr"]')
        # What happened and what to do; the evidence is one click away (Details).
        lines = error.inner_text().splitlines()
        assert lines[0].startswith("Out of memory at In [2], line 1: "), lines
        assert lines[1].startswith("  → Process the data in chunks"), lines
        assert lines[-1].startswith("The evidence: Details in the notification, or "), lines
        assert not any("•" in line for line in lines), lines
        failed.screenshot(path=str(ARTIFACTS / "3-failed-cell.png"))

        # Nothing lost: what In [1] made comes back into the new kernel, one click.
        toast.get_by_role("button", name="Restore variables").click()
        restored = page.locator(".Toastify__toast").filter(
            has_text="Restored 1 variable saved after In [1]"
        )
        wait_or_say(page, restored, 30_000, "5-restore-timeout.png", "no restore toast")
        assert restored.inner_text().rstrip().endswith(": held"), restored.inner_text()
        restored.screenshot(path=str(ARTIFACTS / "5-restored.png"))

        toast.get_by_role("button", name="Details").click()
        report = page.locator(".kd-report")
        report.wait_for(timeout=10_000)
        details = report.inner_text()
        assert details.index("What to do") < details.index("Evidence"), details
        # The frame is named by its cell, never by ipykernel's temp file.
        assert "<module>  In [2], line 1" in details, details
        assert "/tmp/ipykernel_" not in details, details
        page.screenshot(path=str(ARTIFACTS / "4-details.png"))
        # The memory plot: labelled axes, the limit and the guard's threshold, each
        # cell's start with its In [N], the death.
        chart = report.locator("svg.kd-chart")
        assert "seconds since the kernel started" in (
            chart.locator(".kd-axis-x").text_content() or ""
        )
        y_axis = chart.locator(".kd-axis-y").text_content() or ""
        assert "MiB" in y_axis and "0" in y_axis, y_axis
        assert (chart.locator(".kd-limit").text_content() or "") == "limit 400 MiB"
        assert (chart.locator(".kd-threshold").text_content() or "").startswith("guard ")
        starts = chart.locator(".kd-cell-start").all_text_contents()
        assert starts[-2:] == ["In [1]", "In [2]"], starts
        assert (chart.locator(".kd-death").text_content() or "").endswith(" s")
        chart.screenshot(path=str(ARTIFACTS / "4-memory-chart.png"))
    assert all(
        (ARTIFACTS / n).stat().st_size > 0 for n in ("1-status-bar.png", "2-notification.png")
    )
    log = lab.log_text()
    assert "kernel-doctor: server extension loaded" in log, log[-3000:]


def test_a_guard_trip_is_notified_and_the_kernel_lives(lab: Server) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    grow = "chunks = []\nfor i in range(100):\n    chunks.append(bytearray(10 * 1024**2))"
    write_notebook(lab.root, "guard.ipynb", [grow, "del chunks\nprint('alive')"])
    with opened(lab, "guard.ipynb") as page:
        page.locator(".kd-memory").filter(has_text="/ 400 MiB").wait_for(timeout=60_000)
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(0).click()
        page.keyboard.press("Shift+Enter")
        toast = page.locator(".Toastify__toast").filter(has_text="memory guard stopped")
        wait_or_say(page, toast, 60_000, "5-guard-trip-timeout.png", "no guard toast")
        assert "stopped this cell (In [1], line 3)" in toast.inner_text()
        page.keyboard.press("Shift+Enter")  # the next cell: same kernel, still alive
        page.locator(".jp-OutputArea-output").filter(has_text="alive").wait_for(timeout=30_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "5-guard-trip.png"))


def test_the_running_line_is_marked_and_named(lab: Server) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    loop = "import time\nfor i in range(12):\n    time.sleep(0.8)\n    x = i\n    time.sleep(0.8)"
    write_notebook(lab.root, "loop.ipynb", [loop])
    with opened(lab, "loop.ipynb") as page:
        page.locator(".kd-memory").filter(has_text="/ 400 MiB").wait_for(timeout=60_000)
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(0).click()
        page.keyboard.press("Shift+Enter")
        # The marker follows the loop from one sleep to the other (lines 3 and 5).
        marker = page.locator(".jp-Cell .kd-running-marker")
        marker.and_(page.locator('[data-line="3"]')).wait_for(timeout=20_000)
        marker.and_(page.locator('[data-line="5"]')).wait_for(timeout=10_000)
        marker.and_(page.locator('[data-line="3"]')).wait_for(timeout=10_000)
        status = page.locator(".kd-running")
        assert re.fullmatch(r"In \[1\] line [35], 0:\d\d", status.inner_text()), status.inner_text()
        page.screenshot(path=str(ARTIFACTS / "6-running-line.png"))
        # When the cell is over, both go.
        marker.wait_for(state="detached", timeout=30_000)
        page.wait_for_function(
            "() => (document.querySelector('.kd-running')?.textContent ?? '') === ''",
            timeout=10_000,
        )


def test_an_unsupervised_kernel_keeps_jupyterlabs_own_dialog(lab: Server) -> None:
    # The extension is loaded, but this notebook's kernel is the plain python3: there is
    # no diagnosis to give, so JupyterLab's own "Kernel Restarting" dialog must stay.
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    write_notebook(lab.root, "plain.ipynb", ["import os, signal\nos.kill(os.getpid(), 9)"])
    nb = (lab.root / "plain.ipynb").read_text().replace(f'"name": "{TWIN}"', '"name": "python3"')
    (lab.root / "plain.ipynb").write_text(nb)
    with opened(lab, "plain.ipynb") as page:
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=60_000)
        assert page.locator(".kd-memory").inner_text() == ""  # not ours to watch
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(0).click()
        page.keyboard.press("Shift+Enter")
        dialog = page.locator(".jp-Dialog").filter(has_text="appears to have died")
        try:
            dialog.wait_for(timeout=30_000)
        except sync_api.TimeoutError:
            # JupyterLab opens it on the 'autorestarting' status its kernel connection
            # makes of the server's 'restarting' message. Once in a full run under load
            # the kernel died and came back (the cell's prompt reset) with no dialog and
            # no other one shown: the page is kept, and the kill tried once more.
            page.screenshot(path=str(ARTIFACTS / "7-plain-dialog-missed.png"))
            page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(0).click()
            page.keyboard.press("Shift+Enter")
            wait_or_say(page, dialog, 30_000, "7-plain-dialog-timeout.png", "no core dialog")
        page.wait_for_timeout(2000)  # a replacement would have closed it by now
        assert dialog.is_visible()
        toasts = page.locator(".Toastify__toast").all_inner_texts()
        assert not any("kernel-doctor" in t for t in toasts), toasts
        page.screenshot(path=str(ARTIFACTS / "7-plain-dialog.png"))


def test_a_workers_oom_kill_is_notified_and_the_pool_stops_waiting(lab: Server) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    grower = (
        "%doctor guard off\nimport time, multiprocessing\n"
        "def grow(i):\n    if i != 2:\n        time.sleep(0.5)\n        return i\n"
        "    chunks = []\n    while True:\n"
        "        chunks.append(b'\\x01' * (20 * 1024**2))\n        time.sleep(0.01)"
    )
    pool = "with multiprocessing.Pool(4) as pool:\n    pool.map(grow, range(4))"
    write_notebook(lab.root, "workers.ipynb", [grower, pool, "print('alive')"])
    # The earlier tests' kernels share the 400 MB cgroup: with them gone, the room
    # left is the worker's to fill, as for a user with one notebook open.
    for kernel in lab.request("GET", "/api/kernels"):
        lab.request("DELETE", f"/api/kernels/{kernel['id']}")
    with opened(lab, "workers.ipynb") as page:
        page.locator(".kd-memory").filter(has_text="/ 400 MiB").wait_for(timeout=60_000)
        page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(0).click()
        page.keyboard.press("Shift+Enter")
        page.keyboard.press("Shift+Enter")  # the pool: its worker is OOM-killed
        toast = page.locator(".Toastify__toast").filter(has_text="killed by the OOM killer")
        wait_or_say(page, toast, 30_000, "8-worker-timeout.png", "no worker toast")
        assert "(a multiprocessing Pool worker)" in toast.inner_text(), toast.inner_text()
        outputs = page.locator(".jp-OutputArea-output")
        outputs.filter(has_text="KernelDoctorWorkerDied").wait_for(timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "8-worker-died.png"))
        # The cell that waited on the pool ended; the same kernel runs the next one.
        page.keyboard.press("Shift+Enter")
        outputs.filter(has_text="alive").wait_for(timeout=30_000)
        dialogs = page.locator(".jp-Dialog").all_inner_texts()
        assert dialogs == [], dialogs  # the kernel never died
