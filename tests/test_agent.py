"""The agent inside a real (in-process) IPython shell."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_doctor.agent.protocol import ENV_SESSION, CellRecord, State, read_cells, read_state


def records(session: Path) -> list[CellRecord]:
    """The flight record, after the agent wrote what it holds back (clean ends)."""
    from kernel_doctor.agent import running_agent

    agent = running_agent()
    if agent is not None:
        agent._flush()
    return read_cells(str(session))


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from ipykernel.compiler import XCachingCompiler
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv(ENV_SESSION, str(tmp_path))
    # ipykernel's compiler: cell files named by a hash of the source, as in kernels.
    ip = InteractiveShell.instance(compiler_class=XCachingCompiler)
    ip.run_line_magic("load_ext", "kernel_doctor")
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "kernel_doctor")
        InteractiveShell.clear_instance()


@contextlib.contextmanager
def shell_with_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, given: str
) -> Iterator[tuple[Any, int]]:
    """An in-process shell with the agent loaded and handed one end (``given``: "read"
    or "write") of a new pipe in ``variable``, as the supervisor hands it: (the shell,
    the pipe's other end)."""
    import os

    from IPython.core.interactiveshell import InteractiveShell

    r, w = os.pipe()
    pipe = os.fstat(r).st_ino
    handed, kept = (r, w) if given == "read" else (w, r)
    monkeypatch.setenv(ENV_SESSION, str(tmp_path))
    monkeypatch.setenv(variable, str(handed))
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "kernel_doctor")
    try:
        yield ip, kept
    finally:
        ip.run_line_magic("unload_ext", "kernel_doctor")
        InteractiveShell.clear_instance()
        for fd in (r, w):
            # Only if still this pipe's: a test may have closed an end itself, and its
            # number may be another thread's file by now (IPython's history database
            # was, in 3 of 6 runs: "disk I/O error", then a subprocess's EBADF).
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_ino == pipe:
                    os.close(fd)


def test_flight_record(shell: Any, tmp_path: Path) -> None:
    shell.run_cell("x = 1", store_history=True)
    shell.run_cell("y = 2", store_history=False)  # housekeeping: not a cell
    shell.run_cell("def g():\n    return 1 / 0\n\ng()", store_history=True)
    # A cell that raised has its end record on disk at once; a clean end may wait
    # for the next write, and the state record says it ended meanwhile.
    on_disk = read_cells(str(tmp_path))
    last_error = on_disk[-1].error
    assert on_disk[-1].event == "end" and last_error is not None and last_error["line"] == 4
    written = records(tmp_path)
    kinds = [(r.event, r.seq) for r in written]
    assert kinds == [("ready", None), ("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    assert written[1].source == "x = 1"
    error = written[4].error
    assert error is not None
    assert error["type"] == "ZeroDivisionError"
    assert error["line"] == 4
    assert written[2].file in shell.compile._filename_map
    state = read_state(str(tmp_path))
    assert state is not None and state.busy is False


def test_the_agent_wraps_shell_methods_and_gives_them_back(tmp_path: Path) -> None:
    import ast

    from IPython.core.interactiveshell import InteractiveShell

    from kernel_doctor.agent.cells import TreeKeeper

    ip = InteractiveShell.instance()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(ENV_SESSION, str(tmp_path))
            ip.run_line_magic("load_ext", "kernel_doctor")
        assert "run_code" in vars(ip)  # each statement's line, as IPython runs it
        # The checkpoints' tree keeper joins no AST transformers: with one there,
        # IPython walks every cell's whole tree again (ast.fix_missing_locations).
        keeper = TreeKeeper()
        keeper.install(ip)
        ip.run_cell("a = 1\nb = a + 1\nb", store_history=True)
        assert ip.ast_transformers == []
        tree = keeper.take()
        assert isinstance(tree, ast.Module) and len(tree.body) == 3
        keeper.uninstall()
        assert "transform_ast" not in vars(ip)
        ip.run_cell("c = 3", store_history=True)
        assert keeper.take() is None
        events = [r.event for r in records(tmp_path)]
        assert events == ["ready", "start", "end", "start", "end"]
        state = read_state(str(tmp_path))
        assert state is not None and not state.busy and state.seq == 2
    finally:
        ip.run_line_magic("unload_ext", "kernel_doctor")
        InteractiveShell.clear_instance()
    assert "run_code" not in vars(ip)


def test_identical_sources_share_a_file(shell: Any, tmp_path: Path) -> None:
    shell.run_cell("z = 3", store_history=True)
    shell.run_cell("w = 4", store_history=True)
    shell.run_cell("z = 3", store_history=True)
    ends = [r for r in records(tmp_path) if r.event == "end"]
    assert ends[0].file == ends[2].file != ends[1].file


def peeker(session: str) -> Any:
    """Reads the agent's state 0.15 s from now in another thread; call the result to
    get what it read."""
    import threading
    import time

    seen: list[State | None] = []

    def read() -> None:
        time.sleep(0.15)
        seen.append(read_state(session))

    thread = threading.Thread(target=read)
    thread.start()

    def result() -> State | None:
        thread.join()
        return seen[0]

    return result


def test_running_line_is_recorded(shell: Any, tmp_path: Path) -> None:
    # The state is read from another thread while the cell's line sleeps: read from
    # the cell itself, a watcher tick could land inside read_state().
    cell = f"import time\npeek = peeker({str(tmp_path)!r})\ntime.sleep(0.3)\nseen = peek()\n"
    shell.user_ns["peeker"] = peeker
    shell.run_cell(cell, store_history=True)
    seen = shell.user_ns["seen"]
    assert seen.busy is True
    assert seen.line == 3
    assert seen.frame is not None and seen.frame[2] == "<module>"


def test_running_line_in_deep_recursion(shell: Any, tmp_path: Path) -> None:
    cell = (
        "import sys, time\n"
        f"peek = peeker({str(tmp_path)!r})\n"
        "def down(n):\n"
        "    if n == 0:\n"
        "        time.sleep(0.3)\n"
        "        return peek()\n"
        "    return down(n - 1)\n"
        "sys.setrecursionlimit(20000)\n"
        "seen = down(5000)\n"
    )
    shell.user_ns["peeker"] = peeker
    shell.run_cell(cell, store_history=True)
    seen = shell.user_ns["seen"]
    assert seen.line == 9  # the cell's own line, 5000 frames up
    assert seen.frame is not None and seen.frame[1:] == (5, "down")


def test_running_line_inside_time_magic(shell: Any, tmp_path: Path) -> None:
    cell = (
        "%%time\n"
        "import time\n"
        "from kernel_doctor.agent.protocol import read_state\n"
        f"time.sleep(0.2); seen = read_state({str(tmp_path)!r})\n"
    )
    shell.run_cell(cell, store_history=True)
    assert shell.user_ns["seen"].line == 4  # the cell's own line, not the magic's


def test_execution_counts_match_ipython(shell: Any, tmp_path: Path) -> None:
    # IPython 8 and 9 count at different moments; the record must match the result.
    results = [shell.run_cell(f"v = {i}", store_history=True) for i in range(3)]
    starts = [r for r in records(tmp_path) if r.event == "start"]
    assert [r.execution_count for r in starts] == [r.execution_count for r in results]


def test_hooks_never_raise_into_the_users_output(shell: Any, tmp_path: Path, capsys: Any) -> None:
    cell = (
        "class Odd(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no message for you')\n"
        "raise Odd()\n"
    )
    shell.run_cell(cell, store_history=True)
    assert "Error in callback" not in capsys.readouterr().out
    end = [r for r in records(tmp_path) if r.event == "end"][-1]
    # IPython 8 reports Odd; IPython 9 reports the RuntimeError its traceback
    # formatting hit. Either way the cell's end is on record and nothing escaped.
    assert end.error is not None
    if end.error["type"] == "Odd":
        assert end.error["line"] == 4
        assert end.error["message"] == "<Odd: message unavailable>"
    else:
        assert end.error["type"] == "RuntimeError"


def test_one_agent_a_kernel(shell: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The supervisor loads the agent by path as 'kernel_doctor_agent'; a user's
    # %load_ext of either name on top must not start a second recorder.
    from kernel_doctor.supervisor.process import AGENT_BOOT

    monkeypatch.syspath_prepend(AGENT_BOOT)
    shell.run_line_magic("load_ext", "kernel_doctor_boot")
    shell.run_line_magic("load_ext", "kernel_doctor.agent")
    shell.run_cell("once = 1", store_history=True)
    starts = [r for r in records(tmp_path) if r.event == "start"]
    assert len(starts) == 1


def test_full_disk_leaves_the_kernel_running(full_disk: Path) -> None:
    import os
    import subprocess
    import sys

    code = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'kernel_doctor')\n"
        "ip.run_cell('print(6 * 7)', store_history=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, ENV_SESSION: str(full_disk)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout
    assert "kernel-doctor: the agent is off" in done.stderr


def test_wake_pipe_is_taken_once_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from kernel_doctor.agent.hooks import take_wake_fd as _take_wake_fd
    from kernel_doctor.agent.protocol import ENV_WAKE_FD

    r, w = os.pipe()
    try:
        os.set_inheritable(w, True)
        monkeypatch.setenv(ENV_WAKE_FD, str(w))
        assert _take_wake_fd() == w
        # Gone from the environment: a process started from the kernel never writes
        # to whatever has that number there. Closed on exec, and never blocking.
        assert ENV_WAKE_FD not in os.environ
        assert not os.get_inheritable(w) and not os.get_blocking(w)
        assert _take_wake_fd() is None
        with open(os.devnull, "wb") as f:  # not a pipe: refused
            monkeypatch.setenv(ENV_WAKE_FD, str(f.fileno()))
            assert _take_wake_fd() is None
        monkeypatch.setenv(ENV_WAKE_FD, "not-a-number")
        assert _take_wake_fd() is None
    finally:
        os.close(r)
        os.close(w)


def test_each_cell_pokes_the_wake_pipe_without_ever_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time

    from kernel_doctor.agent import recorder
    from kernel_doctor.agent.protocol import ENV_WAKE_FD

    with shell_with_pipe(tmp_path, monkeypatch, ENV_WAKE_FD, "write") as (ip, r):
        ip.run_cell("a = 1", store_history=True)
        time.sleep(recorder.POKE_GAP)
        ip.run_cell("import time; time.sleep(0.01)", store_history=True)
        # Ready (the supervisor sets the allocation layer's ceiling), each start, and the
        # end of a cell that could grow.
        assert os.read(r, 100) == b"rcce"
        # A burst of cells: one poke for its first start, then one a POKE_GAP at most
        # (50 cells take 30 ms here on a good day, 60 ms and more on a slow one).
        time.sleep(recorder.POKE_GAP)
        started = time.monotonic()
        for i in range(50):
            ip.run_cell(f"b = {i}", store_history=True)
        gaps = int((time.monotonic() - started) / recorder.POKE_GAP)
        pokes = os.read(r, 1000).count(b"c")  # (and an end poke for any slow cell)
        assert 1 <= pokes <= 1 + gaps < 50, (pokes, gaps)
        # Nobody reads: the pipe fills, and cells keep running.
        monkeypatch.setattr(recorder, "POKE_GAP", 0.0)
        for i in range(20_000):
            ip.run_cell(f"c = {i % 7}", store_history=True)
        assert ip.user_ns["c"] == 19_999 % 7
        os.close(r)  # the supervisor is gone
        result = ip.run_cell("d = 4", store_history=True)
        assert result.success and ip.user_ns["d"] == 4


def test_doctor_show_leads_with_what_to_do_and_names_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    import json

    from kernel_doctor.agent.magics import _doctor
    from kernel_doctor.agent.protocol import ENV_REPORTS

    reports = tmp_path / "reports"
    reports.mkdir(mode=0o700)
    report = {
        "id": "20261125-140312-4242",
        "outcome": "kernel_died",
        "cause": "out_of_memory",
        "summary": "Out of memory at In [3], line 2: the kernel grew to 300 MiB of the 300 MiB.",
        "evidence": ["the kernel (pid 4242) was ended by SIGKILL"],
        "advice": ["Process the data in chunks."],
        "stack": [
            {
                "file": "/tmp/ipykernel_9/111.py",
                "line": 2,
                "function": "<module>",
                "cell_index": None,
                "execution_count": 3,
            },
            {
                "file": "/tmp/ipykernel_9/222.py",
                "line": 4,
                "function": "grow",
                "cell_index": None,
                "execution_count": 1,
            },
            {
                "file": "/srv/venv/lib/python3.11/site-packages/numpy/core/numeric.py",
                "line": 9,
                "function": "ones",
                "cell_index": None,
                "execution_count": None,
            },
        ],
        "kernel": {"ended": 1795600000.0},
    }
    path = reports / f"{report['id']}.json"
    path.write_text(json.dumps(report))
    path.chmod(0o600)
    monkeypatch.setenv(ENV_REPORTS, str(reports))
    _doctor(f"show {report['id']}")
    assert capsys.readouterr().out.splitlines() == [
        report["summary"],
        "What to do:",
        "  → Process the data in chunks.",
        "Stack (innermost last):",
        "  <module>  In [3], line 2",
        "  grow  In [1], line 4",
        "  ones  numpy/core/numeric.py, line 9",
        "Evidence:",
        "  • the kernel (pid 4242) was ended by SIGKILL",
    ]


def test_records_wait_in_the_shared_mapping_and_survive_a_kill(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from kernel_doctor.agent.protocol import CELLS

    # A real kernel-like process killed by SIGKILL in its third cell: the records
    # not yet appended to the log are in the shared mapping's pages, which the page
    # cache keeps, and read_cells reads both.
    code = (
        "import os, signal\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'kernel_doctor')\n"
        "ip.run_cell('import os, signal', store_history=True)\n"
        "ip.run_cell('1 / 0', store_history=True)\n"
        "ip.run_cell('os.kill(os.getpid(), signal.SIGKILL)', store_history=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, ENV_SESSION: str(tmp_path)}, timeout=60
    )
    assert done.returncode == -signal.SIGKILL
    kinds = [(r.event, r.seq) for r in read_cells(str(tmp_path))]
    assert kinds == [
        ("ready", None),
        ("start", 1),
        ("end", 1),
        ("start", 2),
        ("end", 2),
        ("start", 3),
    ]
    assert read_cells(str(tmp_path))[-1].source == "os.kill(os.getpid(), signal.SIGKILL)"
    logged = (tmp_path / CELLS).read_bytes() if (tmp_path / CELLS).exists() else b""
    assert logged.count(b"\n") < len(kinds)  # they were held, not appended one by one


def test_held_records_are_read_once_after_a_flush_cut_short(tmp_path: Path) -> None:
    from kernel_doctor.agent.held import HELD, HELD_SIZE, HeldLines
    from kernel_doctor.agent.protocol import CELLS

    lines = [CellRecord("start", 1.0 + i, i, source=f"x = {i}").to_line() for i in range(4)]
    held = HeldLines(str(tmp_path / HELD), writable=True)
    try:
        for line in lines:
            assert held.add(line)
        # The agent appended what it held to the log and died before clearing it.
        (tmp_path / CELLS).write_bytes(lines[0] + lines[1] + lines[2])
        assert [r.seq for r in read_cells(str(tmp_path))] == [0, 1, 2, 3]
        held.clear()
        assert [r.seq for r in read_cells(str(tmp_path))] == [0, 1, 2]
        assert not held.add(b"x" * HELD_SIZE)  # too large: the agent appends it itself
    finally:
        held.close()


def test_a_cell_too_large_to_hold_is_logged_at_once(shell: Any, tmp_path: Path) -> None:
    from kernel_doctor.agent.protocol import CELLS

    source = "s = '" + "x" * 100_000 + "'"
    shell.run_cell("a = 1", store_history=True)
    shell.run_cell(source, store_history=True)
    logged = [CellRecord.from_json(__import__("json").loads(line)) for line in
              (tmp_path / CELLS).read_bytes().splitlines()]  # fmt: skip
    assert [(r.event, r.seq) for r in logged if r] == [
        ("ready", None),
        ("start", 1),
        ("end", 1),
        ("start", 2),
    ]
    assert logged[-1] is not None and logged[-1].source == source


def test_the_watcher_ticks_only_when_the_supervisor_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading
    import time

    from kernel_doctor.agent.protocol import ENV_WATCH_FD

    seen: list[State | None] = []
    with shell_with_pipe(tmp_path, monkeypatch, ENV_WATCH_FD, "read") as (ip, w):

        def supervisor() -> None:  # looks twice while the cell sleeps in a function
            deadline = time.monotonic() + 10
            state = read_state(str(tmp_path))
            # Until the cell runs (in a full run under load, run_cell took over 0.3 s
            # to get there), and a little longer: its nap has started.
            while (state is None or not state.busy) and time.monotonic() < deadline:
                time.sleep(0.01)
                state = read_state(str(tmp_path))
            time.sleep(0.1)
            seen.append(read_state(str(tmp_path)))  # nobody asked the watcher yet
            os.write(w, b"w")
            time.sleep(0.3)
            seen.append(read_state(str(tmp_path)))

        looker = threading.Thread(target=supervisor)
        looker.start()
        ip.run_cell("import time\ndef nap():\n    time.sleep(0.9)\nnap()", store_history=True)
        looker.join()
    before, after = seen
    assert before is not None and before.busy and before.frame is not None
    assert before.frame[1:] == (4, "<module>")  # the statement, as IPython ran it
    assert after is not None and after.frame is not None
    assert after.frame[1:] == (3, "nap") and after.line == 4  # the watcher's tick
