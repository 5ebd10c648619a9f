"""Real kernels really dying under ``kernel-doctor run``: each gets the right outcome,
cause, cell and line. Memory deaths happen inside real memory cgroups (300 MB)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest

from conftest import PY311, run_cli

LIMIT = "300M"


def run(path: Path, tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, report = run_cli(["run", str(path), *extra], tmp_path / "report.json")
    assert report is not None, "the report must be written whatever the outcome"
    return code, report


def assert_death(report: dict[str, Any], cause: str, index: int, line: int | None) -> None:
    assert report["outcome"] == "kernel_died", report["summary"]
    assert report["cause"] == cause, report["summary"]
    assert report["cell"]["index"] == index, report["summary"]
    assert report["line"] == line, (report["summary"], report["stack"])


# -- out of memory ------------------------------------------------------------


def test_oom_one_big_allocation(notebook: Any, tmp_path: Path, cgroup_parent: str) -> None:
    path = notebook(["x = 1", "y = 2\ndata = bytearray(600 * 1024**2)\nprint('unreachable')"])
    code, report = run(path, tmp_path, "--memory-limit", LIMIT, "--no-guard")
    assert code == 3
    assert_death(report, "out_of_memory", 1, 2)
    memory = report["memory"]
    assert memory["limit_bytes"] == 300 * 1024**2
    assert "cgroup" in memory["limit_source"]
    assert memory["peak_bytes"] >= 0.9 * memory["limit_bytes"]
    assert memory["kernel_peak_bytes"] >= 0.5 * memory["limit_bytes"]
    assert 0 < len(memory["timeline"]) <= 500
    assert report["summary"].startswith("Out of memory at In [2], line 2: the kernel grew to")
    assert report["signal"] == "SIGKILL"


def test_oom_gradual_growth(notebook: Any, tmp_path: Path, cgroup_parent: str) -> None:
    cell = (
        "import time\n"
        "chunks = []\n"
        "for i in range(200):\n"
        "    chunks.append(bytearray(10 * 1024**2))\n"
        "    time.sleep(0.01)\n"
    )
    code, report = run(notebook([cell]), tmp_path, "--memory-limit", LIMIT, "--no-guard")
    assert code == 3
    assert report["cause"] == "out_of_memory"
    assert report["cell"]["index"] == 0
    assert report["line"] in (4, 5)  # the loop's body: allocating or sleeping
    timeline = [bytes_ for _, bytes_ in report["memory"]["timeline"]]
    assert timeline[-1] > timeline[0]  # growth is on record


def panel(out: str) -> list[str]:
    """The lines of a rendered report panel, without its border."""
    return [line.strip("│╭╰─").strip() for line in out.splitlines()]


def test_oom_inside_function_defined_in_another_cell_names_both_cells(
    notebook: Any, tmp_path: Path, cgroup_parent: str, capsys: Any
) -> None:
    define = (
        "def grow():\n    out = []\n    while True:\n        out.append(bytearray(10 * 1024**2))\n"
    )
    path = notebook([define, "import time\ntime.sleep(0.1)\ngrow()"], markdown_first=True)
    code, report = run(path, tmp_path, "--memory-limit", LIMIT, "--no-guard")
    out, err = capsys.readouterr()
    assert code == 3
    # The JSON's index counts the markdown cell: the running cell is the third cell.
    assert_death(report, "out_of_memory", 2, 3)
    functions = {(f["function"], f["cell_index"], f["execution_count"]) for f in report["stack"]}
    assert ("grow", 1, 1) in functions, report["stack"]
    # What a person reads names cells as JupyterLab does, whatever is above them:
    # progress, summary, the cell's heading and the stack, never a temp file.
    assert err.splitlines()[-2:] == ["kernel-doctor: [1/2] In [1]", "kernel-doctor: [2/2] In [2]"]
    assert report["summary"].startswith("Out of memory at In [2], line 3: the kernel grew to ")
    lines = panel(out)
    assert "In [2], line 3" in lines  # the cell's source follows, line 3 marked
    stack = lines.index("stack (innermost last)")
    assert lines[stack + 1 : stack + 3] == ["<module>  In [2], line 3", "grow  In [1], line 4"]
    assert "/tmp/ipykernel_" not in out


def test_pure_python_recursion_dies_of_memory(
    notebook: Any, tmp_path: Path, cgroup_parent: str
) -> None:
    # Python 3.11+ keeps pure-Python frames on the heap: raised past the limit, the
    # recursion grows memory until the OOM killer ends it.
    cell = "import sys\nsys.setrecursionlimit(10**8)\ndef r(n):\n    return r(n + 1) + 1\nr(0)"
    code, report = run(notebook([cell]), tmp_path, "--memory-limit", LIMIT, "--no-guard")
    assert code == 3
    assert_death(report, "out_of_memory", 0, 5)
    assert any("runaway recursion in r()" in fact for fact in report["evidence"])
    assert report["advice"][0].startswith("r() recursed until its frames filled memory")


# -- native crashes -------------------------------------------------------------


def test_segfault_main_thread(notebook: Any, tmp_path: Path) -> None:
    path = notebook(["x = 1", "import ctypes\nx = 2\nctypes.string_at(0)"])
    code, report = run(path, tmp_path)
    assert code == 3
    assert_death(report, "native_crash", 1, 3)
    assert report["signal"] == "SIGSEGV"
    assert "native extension" in report["advice"][0]


def test_segfault_background_thread(notebook: Any, tmp_path: Path) -> None:
    cell = (
        "import ctypes, threading, time\n"
        "def crash():\n"
        "    ctypes.string_at(0)\n"
        "threading.Thread(target=crash).start()\n"
        "time.sleep(30)\n"
    )
    code, report = run(notebook([cell]), tmp_path)
    assert code == 3
    assert_death(report, "native_crash", 0, 3)  # the crashing thread's line in the cell


def test_stack_overflow_through_c(notebook: Any, tmp_path: Path) -> None:
    cell = "import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    return list(map(f, [n]))\nf(1)"
    code, report = run(notebook([cell]), tmp_path)
    if PY311:
        assert code == 3
        assert_death(report, "stack_overflow", 0, 5)
        assert any("recursion" in fact for fact in report["evidence"])
    else:  # 3.12+ guards C recursion: a RecursionError, which is not a death
        assert code == 1
        assert report["outcome"] == "cell_error"


def test_abort(notebook: Any, tmp_path: Path) -> None:
    code, report = run(notebook(["import os, time\ntime.sleep(0.2)\nos.abort()"]), tmp_path)
    assert code == 3
    assert_death(report, "native_crash", 0, 3)
    assert report["signal"] == "SIGABRT"


# -- exits and outside kills ----------------------------------------------------


def test_os_exit(notebook: Any, tmp_path: Path) -> None:
    # A library that ends the process from inside a call the cell made. (The agent
    # samples the running line every 20 ms: an exit within 20 ms of a line starting
    # is reported at the line before.)
    cell = "import os, time\ndef finish():\n    time.sleep(0.3)\n    os._exit(3)\nfinish()"
    code, report = run(notebook([cell]), tmp_path)
    assert code == 3
    assert_death(report, "exit", 0, 5)
    assert report["exit_code"] == 3
    assert report["signal"] is None


def test_os_exit_at_top_level_names_its_line(notebook: Any, tmp_path: Path) -> None:
    # Each top-level statement is noted as it starts: no sampling delay.
    code, report = run(notebook(["import os, time\ntime.sleep(0.3)\nos._exit(3)"]), tmp_path)
    assert code == 3
    assert_death(report, "exit", 0, 3)


def test_sigkill_from_outside_is_not_oom(notebook: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    cell = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)"

    def killer() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if pid_file.exists() and pid_file.read_text():
                time.sleep(0.2)  # let the cell reach its sleep
                os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the kernel we started
                return
            time.sleep(0.02)

    thread = threading.Thread(target=killer)
    thread.start()
    code, report = run(notebook([cell]), tmp_path)
    thread.join()
    assert code == 3
    assert_death(report, "killed", 0, 3)
    assert any("did not change" in fact for fact in report["evidence"])


def test_startup_failure(notebook: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ipykernel_launcher.py").write_text("import module_that_does_not_exist_kd\n")
    spec = tmp_path / "jupyter" / "kernels" / "broken"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec_json = {
        "argv": argv,
        "display_name": "Broken",
        "language": "python",
        "env": {"PYTHONPATH": str(broken)},
    }
    (spec / "kernel.json").write_text(json.dumps(spec_json))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    code, report = run(notebook(["x = 1"], kernel="broken"), tmp_path)
    assert code == 3
    assert report["outcome"] == "kernel_died"
    assert report["cause"] == "startup_failure"
    assert "ModuleNotFoundError" in report["summary"]
    assert report["cell"] is None


# -- not deaths ----------------------------------------------------------------


def test_exception_is_a_cell_error_not_a_death(notebook: Any, tmp_path: Path, capsys: Any) -> None:
    cells = ["def g():\n    return 1 / 0", "a = 1\n\ng()", "print('not run')"]
    code, report = run(notebook(cells, markdown_first=True), tmp_path)
    out, _ = capsys.readouterr()
    assert code == 1
    assert report["outcome"] == "cell_error"
    assert report["cause"] is None
    assert report["cell"]["index"] == 2
    assert report["line"] == 3
    assert report["summary"] == (
        "In [2], line 3 raised ZeroDivisionError: division by zero. The kernel is alive: "
        "this is an error in the cell, not a kernel death."
    )
    # Each frame is named by its cell (the function another cell defined too).
    places = [(f["function"], f["execution_count"], f["cell_index"]) for f in report["stack"]]
    assert places == [("<module>", 2, 2), ("g", 1, 1)]
    lines = panel(out)
    stack = lines.index("stack (innermost last)")
    assert lines[stack + 1 : stack + 3] == ["<module>  In [2], line 3", "g  In [1], line 2"]
    assert "/tmp/ipykernel_" not in out


def test_run_prints_only_its_progress_and_result(
    notebook: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    # An ipykernel that writes to its stdout and stderr before it captures them (as
    # ipykernel's own warnings, and a library's C code, do).
    noisy = (
        "import sys; print('noise on stderr', file=sys.stderr); print('noise on stdout'); "
        "from ipykernel.kernelapp import launch_new_instance; launch_new_instance()"
    )
    spec = tmp_path / "jupyter" / "kernels" / "noisy"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-c", noisy, "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Noisy", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    transport = (
        "import os\nfrom ipykernel.kernelapp import IPKernelApp\n"
        "print(IPKernelApp.instance().transport, os.environ.get('KERNEL_DOCTOR_KERNEL_OUTPUT'))"
    )
    path = notebook(["x = 1", transport], kernel="noisy")
    out_nb = tmp_path / "out.ipynb"
    code, report = run(path, tmp_path, "--output", str(out_nb))
    out, err = capfd.readouterr()  # what reaches the terminal, the kernel's writes too
    assert code == 0, report["summary"]
    # One line to start (never broken at a comma), one per cell, then the result.
    assert err.splitlines() == [
        f"kernel-doctor: running {path} on kernel 'noisy' under the memory limit that "
        "already applies",
        "kernel-doctor: [1/2] In [1]",
        "kernel-doctor: [2/2] In [2]",
    ]
    assert panel(out)[1] == "The notebook ran to the end."
    assert "noise" not in out + err
    # Over IPC (Unix sockets in the private session folder): no TCP port, no warning;
    # where the supervisor copies the kernel's stderr is not passed on to the kernel.
    executed = nbformat.read(str(out_nb), as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "ipc None\n"


def test_timeout(notebook: Any, tmp_path: Path) -> None:
    cell = "import time\nx = 0\nwhile True:\n    x += 1\n"
    code, report = run(notebook(["y = 1", cell]), tmp_path, "--timeout", "1.5")
    assert code == 4
    assert report["outcome"] == "timeout"
    assert report["cell"]["index"] == 1
    assert report["line"] in (3, 4)
    assert "1.5 s timeout" in report["summary"]
    # The run ended its kernel (nbclient only ends kernels it started itself): the
    # loop does not spin on after the run.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and kernels_of_this_process():
        time.sleep(0.05)
    assert not kernels_of_this_process()


def kernels_of_this_process() -> list[str]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ipykernel_launcher" in " ".join(proc.cmdline()):
                found.append(" ".join(proc.cmdline()))
    return found


def test_healthy_notebook_has_identical_outputs(notebook: Any, tmp_path: Path) -> None:
    from nbclient import NotebookClient

    cells = [
        "print('hello')",
        "import sys\nprint('to stderr', file=sys.stderr)",
        "{'a': 1, 'b': [1, 2]}",
        "from IPython.display import HTML, display\ndisplay(HTML('<b>x</b>'))",
        "for i in range(3):\n    print(i)",
    ]
    path = notebook(cells)
    out = tmp_path / "out.ipynb"
    code, report = run(path, tmp_path, "--output", str(out))
    assert code == 0
    assert report["outcome"] == "ok" and report["cause"] is None
    supervised = nbformat.read(str(out), as_version=4)
    plain = nbformat.read(str(path), as_version=4)
    NotebookClient(plain, kernel_name="python3").execute()
    assert [c.outputs for c in supervised.cells] == [c.outputs for c in plain.cells]
    stored = Path(os.environ["JUPYTER_DATA_DIR"], "kernel-doctor", "reports")
    before = set(stored.glob("*.json")) if stored.exists() else set()
    assert not {p for p in before if "kernel_died" in p.read_text() and str(path) in p.read_text()}


# -- what a death leaves behind -------------------------------------------------


def test_death_report_is_stored_and_shown(notebook: Any, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out.ipynb"
    path = notebook(["import os, time\ntime.sleep(0.2)\nos._exit(5)", "print('never')"])
    code, report = run(path, tmp_path, "--output", str(out))
    assert code == 3
    stored = Path(
        os.environ["JUPYTER_DATA_DIR"], "kernel-doctor", "reports", f"{report['id']}.json"
    )
    assert stored.exists()
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert json.loads(stored.read_text())["cause"] == "exit"
    # The executed notebook marks the killed cell as failed, with the diagnosis.
    executed = nbformat.read(str(out), as_version=4)
    errors = [o for o in executed.cells[0].outputs if o.output_type == "error"]
    assert errors and errors[0].ename == "KernelDied"
    assert "exited by itself with code 5" in errors[0].evalue
    capsys.readouterr()
    code, _ = run_cli(["show", report["id"], "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["id"] == report["id"]
    code, _ = run_cli(["reports"])
    assert code == 0
    assert report["id"] in capsys.readouterr().out


def test_fast_fill_in_a_function_with_sampling_only(
    notebook: Any, tmp_path: Path, cgroup_parent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No cgroup usage events (cgroup v2 has none): the agent's wake-up at the cell's
    # start is what gets a stack dump taken while bytearray() memsets the limit full.
    monkeypatch.setenv("KERNEL_DOCTOR_EVENTS", "0")
    define = "def fill(n):\n    a = 1\n    return bytearray(n)\n"
    path = notebook([define, "y = 2\nfill(1 << 30)"])
    code, report = run(path, tmp_path, "--memory-limit", LIMIT, "--no-guard")
    assert code == 3
    assert_death(report, "out_of_memory", 1, 2)
    innermost = report["stack"][-1]
    assert (innermost["function"], innermost["cell_index"], innermost["line"]) == ("fill", 0, 3)
