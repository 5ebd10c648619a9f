"""The papermill engine: a kernel that dies leaves its diagnosis in the output notebook,
the killed cell marked failed, where papermill's own engine calls it completed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

pytest.importorskip("papermill")


def papermill(path: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """papermill's own CLI, with our engine."""
    return subprocess.run(
        [sys.executable, "-m", "papermill", "--engine", "kernel-doctor", str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_killed_cell_is_marked_failed_with_its_diagnosis(notebook: Any, tmp_path: Path) -> None:
    path = notebook(["y = 1", "import ctypes\nctypes.string_at(0)", "print('never')"])
    out = tmp_path / "out.ipynb"
    result = papermill(path, out)
    assert result.returncode == 138, result.stderr[-2000:]  # papermill's, for a dead kernel
    nb = nbformat.read(str(out), as_version=4)
    assert nb.metadata.papermill.exception is True
    killed = nb.cells[1]
    assert killed.metadata.papermill.status == "failed"
    error = next(o for o in killed.outputs if o.output_type == "error")
    assert error.ename == "KernelDied"
    summary = "Native crash (SIGSEGV) at In [2], line 2: code outside Python crashed the kernel."
    assert error.evalue == f"native_crash: {summary}"
    # What happened and what to do, as JupyterLab shows the cell; the evidence is one
    # command away.
    assert error.traceback[0] == summary
    assert error.traceback[1].startswith("  → This is a bug in a native extension")
    assert error.traceback[-1].startswith("The evidence: kernel-doctor show ")
    assert error.traceback[-1].endswith(" --verbose")
    assert not any("•" in line for line in error.traceback)
    assert nb.cells[2].outputs == []
    assert "kernel-doctor" not in result.stdout  # quiet: the notebook carries the diagnosis


def test_a_healthy_notebook_runs_as_with_papermills_engine(notebook: Any, tmp_path: Path) -> None:
    path = notebook(["print('hello')"])
    out = tmp_path / "out.ipynb"
    result = papermill(path, out)
    assert result.returncode == 0, result.stderr[-2000:]
    nb = nbformat.read(str(out), as_version=4)
    assert nb.cells[0].outputs[0]["text"] == "hello\n"
    assert nb.cells[0].metadata.papermill.status == "completed"


def test_a_checkpointed_run_resumes_after_its_kernel_was_killed(
    notebook: Any, tmp_path: Path
) -> None:
    import os

    marker = tmp_path / "killed-once"
    path = notebook(
        [
            "import os, pathlib, signal, time",
            "steps = ['one']",
            "time.sleep(1.5)  # the state before this cell is checkpointed meanwhile",
            "steps.append('two')",
            f"if not pathlib.Path({str(marker)!r}).exists():\n"
            f"    pathlib.Path({str(marker)!r}).touch()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)",
            "print(steps)",
        ]
    )
    # papermill's API, with the engine option, in a process of its own (papermill's
    # threads would outlive it in pytest's).
    api = (
        "import sys, papermill as pm\n"
        "pm.execute_notebook(sys.argv[1], sys.argv[2], engine_name='kernel-doctor', "
        "kernel_doctor_checkpoint=True)\n"
    )
    first = tmp_path / "first.ipynb"
    died = subprocess.run(
        [sys.executable, "-c", api, str(path), str(first)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert died.returncode != 0 and "DeadKernelError" in died.stderr, died.stderr[-2000:]
    # papermill's CLI passes no engine options: the environment asks for the resume.
    out = tmp_path / "out.ipynb"
    result = subprocess.run(
        [sys.executable, "-m", "papermill", "--engine", "kernel-doctor", str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KERNEL_DOCTOR_RESUME": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--resume: Restored 1 variable saved after In [2]" in result.stderr, result.stderr
    nb = nbformat.read(str(out), as_version=4)
    assert nb.cells[0].outputs == [] and nb.cells[1].outputs == []  # skipped
    assert nb.cells[5].outputs[0]["text"] == "['one', 'two']\n"
