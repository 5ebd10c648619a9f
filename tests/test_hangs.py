"""Hung kernels, with real supervised kernels: `where` names the stack, cell, line and
what the kernel does at the OS level; an ignored interrupt is noticed and explained;
`run --timeout` reports the same; `top` runs in a real 80-column terminal."""

from __future__ import annotations

import builtins
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from conftest import run_cli
from kernels import Kernel, Kernels, write_kernelspecs

# (name, cell, line it hangs on, what `where` must say, does an interrupt stop it)
HANGS = [
    ("python loop", "x = 0\nwhile True:\n    x += 1\n", (2, 3), "burning CPU", True),
    (
        "C loop",
        "import itertools\nx = 1\nsum(itertools.repeat(1))\n",
        (3,),
        "burning CPU in a C call that holds the GIL",
        False,
    ),
    (
        "socket read",
        "import socket\na, b = socket.socketpair()\ndata = a.recv(10)\n",
        (3,),
        "waiting on a socket read (recvfrom)",
        True,
    ),
    (
        "lock",
        "import threading\nlock = threading.Lock()\nlock.acquire()\nlock.acquire()\n",
        (4,),
        "waiting on a lock (futex)",
        True,
    ),
]


@pytest.fixture
def kernels(tmp_path: Path) -> Iterator[Kernels]:
    started = Kernels(write_kernelspecs(tmp_path))
    try:
        yield started
    finally:
        started.close()


def hang(kernels: Kernels, cell: str) -> Kernel:
    kernel = kernels.start("supervised")
    assert kernel.kc is not None
    kernel.kc.execute(cell, allow_stdin=False)
    time.sleep(1.0)
    return kernel


def where(pid: int, capsys: Any) -> dict[str, Any]:
    from kernel_doctor.commands import main

    t0 = time.perf_counter()
    assert main(["where", str(pid), "--json"]) == 0
    reply: dict[str, Any] = json.loads(capsys.readouterr().out)
    reply["took"] = time.perf_counter() - t0
    return reply


def innermost_cell_line(reply: dict[str, Any]) -> int:
    from kernel_doctor.agent.looks import Look
    from kernel_doctor.agent.naming import is_cell_file
    from kernel_doctor.diagnosis.hang import main_frames

    frames = main_frames(cast(Look, reply))
    return int(next(f[1] for f in reversed(frames) if is_cell_file(str(f[0]))))


@pytest.mark.parametrize(("name", "cell", "lines", "doing", "_"), HANGS, ids=[h[0] for h in HANGS])
def test_where_names_stack_line_and_what_the_kernel_does(
    kernels: Kernels, capsys: Any, name: str, cell: str, lines: tuple[int, ...], doing: str, _: bool
) -> None:
    kernel = hang(kernels, cell)
    reply = where(kernel.kernel_process().pid, capsys)
    assert reply["busy"] is True
    assert reply["verdict"] == doing.replace(" in a C call that holds the GIL", "")
    assert doing in reply["summary"], reply["summary"]
    assert innermost_cell_line(reply) in lines
    assert reply["line"] in lines and f"In [1], line {reply['line']}" in reply["summary"]
    if name == "C loop":  # the watcher could not run: faulthandler's main-thread dump
        assert reply["python"] is None and reply["main_dump"]
    else:  # every thread, main first, with source lines
        assert reply["python"][0]["main"] and len(reply["python"]) >= 3
        assert reply["python"][0]["frames"][-1][3] in cell
    assert reply["took"] < 2.0


def test_where_needs_no_ptrace_of_its_own(
    kernels: Kernels, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under Yama (ptrace_scope=1) only the kernel's parent may read these files. This
    # machine has no Yama, so refuse them to `where` itself: the supervisor reads them.
    kernel = hang(kernels, HANGS[2][1])
    real_open = builtins.open

    def guarded(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).endswith(("/syscall", "/wchan")):
            raise PermissionError(13, "Operation not permitted (Yama)", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    reply = where(kernel.kernel_process().pid, capsys)
    assert reply["verdict"] == "waiting on a socket read (recvfrom)"


def test_an_ignored_interrupt_is_noticed_and_a_restart_reported(
    kernels: Kernels, capsys: Any
) -> None:
    from kernel_doctor.reports.history import stored_reports
    from kernel_doctor.reports.model import Report

    kernel = hang(kernels, HANGS[1][1])
    pid = kernel.kernel_process().pid
    kernel.km.interrupt_kernel()
    time.sleep(4.0)  # the supervisor waits 3 s for the cell to stop
    reply = where(pid, capsys)
    ignored = reply["ignored_interrupt"]
    assert ignored is not None and ignored["seq"] == reply["seq"]
    from kernel_doctor.diagnosis.hang import describe

    text = describe(ignored, interrupt=True)
    assert "an interrupt did not stop In [1] within 3 s" in text
    assert "does not check for interrupts" in text
    assert "In [1], line 3: sum(itertools.repeat(1))" in text
    assert "Only a restart will stop it." in text

    kernel.km.restart_kernel(now=False)  # jupyter_client: SIGTERM after its grace
    deadline = time.monotonic() + 20
    hung: list[Report] = []
    while time.monotonic() < deadline and not hung:
        hung = [r for r in stored_reports() if r.kernel is not None and r.kernel.pid == pid]
        time.sleep(0.2)
    assert len(hung) == 1 and hung[0].cause == "hang", hung
    assert hung[0].cell is not None and hung[0].cell.execution_count == 1
    assert hung[0].line == 3
    assert "ignored the interrupt" in hung[0].summary


@pytest.mark.parametrize(
    ("name", "cell", "lines", "doing", "stops"), HANGS, ids=[h[0] for h in HANGS]
)
def test_run_timeout_reports_what_the_cell_was_doing(
    notebook: Any,
    tmp_path: Path,
    name: str,
    cell: str,
    lines: tuple[int, ...],
    doing: str,
    stops: bool,
) -> None:
    code, report = run_cli(
        ["run", str(notebook(["y = 1", cell])), "--timeout", "1.5"], tmp_path / "r.json"
    )
    assert code == 4 and report is not None
    assert report["outcome"] == "timeout"
    assert report["cell"]["index"] == 1 and report["line"] in lines
    assert doing in report["summary"], report["summary"]
    assert report["interrupt"] == {"sent": True, "worked": stops}
    assert report["stack"][0]["execution_count"] == 2
    assert report["stack"][-1]["line"] in lines or not report["stack"][-1]["execution_count"]
    if not stops:
        assert "does not check for interrupts" in report["summary"]


def test_a_deep_recursion_traceback_is_not_a_hang(
    notebook: Any, tmp_path: Path, cgroup_parent: str
) -> None:
    cell = "import sys\nsys.setrecursionlimit(10**6)\ndef r(n):\n    return r(n + 1)\nr(0)\n"
    code, report = run_cli(
        ["run", str(notebook([cell])), "--timeout", "6", "--memory-limit", "1G"],
        tmp_path / "r.json",
    )
    assert code == 4 and report is not None
    phase = report["hang"]["phase"]
    assert phase["phase"] == "traceback" and phase["error"] == "RecursionError"
    assert phase["depth"] > 900_000
    assert "IPython is formatting its traceback: the kernel is not hung" in report["summary"]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_top_in_an_80_column_terminal(kernels: Kernels) -> None:
    busy = hang(kernels, HANGS[0][1])
    idle = kernels.start("supervised")
    session = f"kd-top-{time.monotonic_ns()}"
    command = f"{sys.executable} -m kernel_doctor top"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", command],
        check=True,
    )
    try:
        screen = ""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            time.sleep(0.5)
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if "busy" in screen and str(idle.kernel_process().pid) in screen:
                break
        lines = screen.splitlines()
        assert max(len(line) for line in lines) <= 80, screen
        busy_row = next(line for line in lines if str(busy.kernel_process().pid) in line)
        assert "busy" in busy_row and "In [1]:" in busy_row, screen
        idle_row = next(line for line in lines if str(idle.kernel_process().pid) in line)
        assert "idle" in idle_row, screen
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            alive = subprocess.run(["tmux", "has-session", "-t", session], capture_output=True)
            if alive.returncode != 0:
                break
            time.sleep(0.1)
        assert alive.returncode != 0, "top did not quit on q"
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
