"""Shared test set-up: private Jupyter data and runtime dirs, one parent memory cgroup per
session, notebooks made on the fly, and process clean-up that runs even on failure."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from kernel_doctor.probe.create import ENV_PARENT, default_parent
from kernels import STARTUP_TIMEOUT

PY311 = sys.version_info[:2] == (3, 11)

# Reports and sessions of the tests go to a private data dir, connection files to a
# private runtime dir: never the user's.
_RUNTIME = tempfile.mkdtemp(prefix="kd-tests-runtime-")
os.environ["JUPYTER_DATA_DIR"] = os.path.join(_RUNTIME, "data")
os.environ["JUPYTER_RUNTIME_DIR"] = os.path.join(_RUNTIME, "runtime")
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_RUNTIME, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``vm`` boot a VM (minutes): only with ``-m`` naming them, or inside
    the guest itself (tests/vm/run.py), never in a plain ``pytest``."""
    if "vm" in config.getoption("markexpr") or os.environ.get("KERNEL_DOCTOR_IN_VM"):
        return
    deselected = [item for item in items if item.get_closest_marker("vm") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item.get_closest_marker("vm") is None]


@pytest.fixture(scope="session")
def cgroup_parent() -> Iterator[str]:
    """One parent memory cgroup for the whole test session; per-test cgroups (made
    by ``run --memory-limit``) go inside it. Skips where none can be made."""
    found = default_parent()
    if found is None:
        pytest.skip("no memory cgroup controller is mounted here")
    version, parent = found
    path = os.path.join(parent, f"kd-tests-{os.getpid()}")
    try:
        os.mkdir(path)
        if version == 2:
            with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                f.write("+memory")
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup under {parent}: {exc.strerror}")
    old = os.environ.get(ENV_PARENT)
    os.environ[ENV_PARENT] = path
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop(ENV_PARENT, None)
        else:
            os.environ[ENV_PARENT] = old
        remove_cgroup_tree(path)


def limited_cgroup(limit_bytes: int, who: str) -> str:
    """A fresh memory cgroup directory (in the session's parent) with ``limit_bytes``, for
    ``who`` to be put in by path; skips where none can be made."""
    from kernel_doctor._errors import CgroupUnavailable
    from kernel_doctor.probe.create import make_limited_cgroup

    try:
        cgroup = make_limited_cgroup(limit_bytes)
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup for {who}: {exc}")
    if cgroup.path is None:
        pytest.skip(f"memory cgroups only through systemd-run here; {who} needs a directory")
    return cgroup.path


def remove_cgroup_tree(path: str) -> None:
    """Kill what our tests left in ``path`` (only processes in our own cgroups) and
    remove it, children first."""
    for child in sorted((p for p in Path(path).glob("*/") if p.is_dir()), reverse=True):
        remove_cgroup_tree(str(child))
    procs = Path(path, "cgroup.procs")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            pids = [int(p) for p in procs.read_text().split()]
        except OSError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def make_notebook(
    directory: Path,
    cells: list[str],
    name: str = "nb.ipynb",
    kernel: str = "python3",
    markdown_first: bool = False,
) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    nb.cells = ([new_markdown_cell("# heading")] if markdown_first else []) + [
        new_code_cell(source) for source in cells
    ]
    path = directory / name
    nbformat.write(nb, str(path))
    return path


def run_cli(args: list[str], report: Path | None = None) -> tuple[int, dict[str, Any] | None]:
    from kernel_doctor.commands import main

    argv = list(args)
    if argv[:1] == ["run"] and "--start-timeout" not in argv:
        argv += ["--start-timeout", str(STARTUP_TIMEOUT)]  # run's default is the host's 60 s
    if report is not None:
        argv += ["--report-json", str(report)]
    code = main(argv)
    document = json.loads(report.read_text()) if report is not None and report.exists() else None
    if document is not None and os.environ.get("KERNEL_DOCTOR_VM_RESULTS"):
        note_for_the_vm_harness(os.environ["KERNEL_DOCTOR_VM_RESULTS"], code, document)
    return code, document


def note_for_the_vm_harness(results: str, code: int, document: dict[str, Any]) -> None:
    """Inside the VM (tests/vm/run.py), the gist of each report goes back to the host."""
    cell = document.get("cell") or {}
    gist = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
        "exit_code": code,
        "outcome": document.get("outcome"),
        "cause": document.get("cause"),
        "cell": cell.get("index"),
        "line": document.get("line"),
        "limit_source": (document.get("memory") or {}).get("limit_source"),
        "guard": document.get("guard"),
        "summary": document.get("summary"),
    }
    with open(os.path.join(results, "reports.jsonl"), "a") as f:
        f.write(json.dumps(gist) + "\n")


@pytest.fixture
def notebook(tmp_path: Path) -> Any:
    def make(cells: list[str], **kwargs: Any) -> Path:
        return make_notebook(tmp_path, cells, **kwargs)

    return make


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    """A 64 KiB tmpfs, filled up: a real ENOSPC for every write."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        (mount / "runtime").mkdir()
        with contextlib.suppress(OSError), open(mount / "filler", "wb") as f:
            f.write(b"x" * 128 * 1024)
        yield mount / "runtime"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
