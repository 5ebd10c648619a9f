"""Pure functions: sizes, faulthandler parsing, the diagnosis, downsampling, the state file.

The faulthandler dumps are real: small Python subprocesses dump their stacks (or
crash) into files, so the parser is checked against what CPython really writes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_doctor._errors import UsageError
from kernel_doctor.agent.naming import cell_place, frame_place, is_cell_file, short_paths
from kernel_doctor.agent.protocol import STATE, STATE_SIZE, State, StateFile, read_state
from kernel_doctor.diagnosis import diagnose
from kernel_doctor.diagnosis.stacks import (
    cell_line,
    parse_faulthandler,
    pick_thread,
    runaway_recursion,
)
from kernel_doctor.evidence import CellRun, Evidence, Frame, MemoryEvidence
from kernel_doctor.launch import ipc_transport
from kernel_doctor.probe.base import MemoryLimit
from kernel_doctor.sizes import format_size, parse_size
from kernel_doctor.supervisor.collect import downsample

if TYPE_CHECKING:
    from kernel_doctor.supervisor.ceiling import Ceiling

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4
PROPERTY = settings(max_examples=200, deadline=None, database=None)

# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512M", 512 * MiB),
        ("512m", 512 * MiB),
        ("1.5G", int(1.5 * GiB)),
        ("2GiB", 2 * GiB),
        ("2gib", 2 * GiB),
        ("1073741824", GiB),
        ("1 g", GiB),
        ("  3 MB  ", 3 * MiB),
        ("10k", 10 * KiB),
        ("1T", TiB),
        ("100b", 100),
        (".5G", GiB // 2),
        ("1", 1),
    ],
)
def test_parse_size_reads_docker_style_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "-1G", "1.5X", "0", "0G", "0.0001K", "1..5G", "G", "1 G B", "1e9"]
)
def test_parse_size_rejects_unreadable_sizes(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_parse_size_error_messages_are_exact() -> None:
    with pytest.raises(UsageError) as unreadable:
        parse_size("abc")
    assert str(unreadable.value) == (
        "cannot read 'abc' as a memory size: use a number with an optional unit, "
        "e.g. 512M, 1.5G or 2GiB"
    )
    assert unreadable.value.exit_code == 2
    with pytest.raises(UsageError) as zero:
        parse_size("0")
    assert str(zero.value) == "memory size '0' must be more than zero"


_MULTIPLIERS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": KiB,
    "kib": KiB,
    "m": MiB,
    "mb": MiB,
    "mib": MiB,
    "g": GiB,
    "gb": GiB,
    "gib": GiB,
    "t": TiB,
    "tb": TiB,
    "tib": TiB,
}


@PROPERTY
@given(
    n=st.integers(min_value=1, max_value=10**6),
    unit=st.sampled_from(sorted(_MULTIPLIERS)),
    upper=st.booleans(),
    space=st.booleans(),
)
def test_parse_size_property(n: int, unit: str, upper: bool, space: bool) -> None:
    written = unit.upper() if upper else unit
    text = f"{n}{' ' if space else ''}{written}"
    assert parse_size(text) == n * _MULTIPLIERS[unit]


@pytest.mark.parametrize(
    ("num", "expected"),
    [
        (None, "unknown"),
        (0, "0 B"),
        (800, "800 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (12 * KiB, "12 KiB"),
        (300 * MiB, "300 MiB"),
        (int(1.5 * GiB), "1.5 GiB"),
        (int(1023.96 * MiB), "1.0 GiB"),
        (2 * TiB, "2.0 TiB"),
        (2000 * TiB, "2000 TiB"),
    ],
)
def test_format_size(num: int | None, expected: str) -> None:
    assert format_size(num) == expected


@PROPERTY
@given(st.integers(min_value=0, max_value=2**62))
def test_format_size_never_raises(num: int) -> None:
    text = format_size(num)
    number, unit = text.split(" ")
    assert unit in ("B", "KiB", "MiB", "GiB", "TiB")
    float(number)  # a number, whatever its rounding
    if unit != "TiB":
        assert float(number) < 1024


# ------------------------------------------------------------- faulthandler dumps


def _run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _line_of(source: str, marker: str) -> int:
    for number, text in enumerate(source.splitlines(), 1):
        if marker in text:
            return number
    raise AssertionError(marker)


@dataclass
class Dump:
    text: str
    source: str
    script: Path
    returncode: int
    idents: list[int]


_THREADS = textwrap.dedent(
    """\
    import faulthandler, sys, threading
    release, started = threading.Event(), threading.Event()
    def worker_wait():
        started.set()
        release.wait()  # WORKER
    worker = threading.Thread(target=worker_wait)
    worker.start()
    started.wait()
    def inner(f):
        faulthandler.dump_traceback(file=f, all_threads=True)  # INNER
    def outer(f):
        inner(f)  # OUTER
    with open(sys.argv[1], "w") as f:
        outer(f)  # MODULE
    print(threading.get_ident(), worker.ident)
    release.set()
    worker.join()
    """
)

_DEEP = textwrap.dedent(
    """\
    import faulthandler, sys
    def recurse(f, n):
        if n == 0:
            faulthandler.dump_traceback(file=f, all_threads=True)  # BOTTOM
            return
        recurse(f, n - 1)  # RECURSE
    with open(sys.argv[1], "w") as f:
        recurse(f, 150)
    """
)

# The crash scripts run from a path shaped like ipykernel's cell files, so the
# diagnosis finds the "cell" in their stacks as it would in a kernel.
_SEGV_RECURSION = textwrap.dedent(
    """\
    import ctypes, faulthandler, resource, sys, threading
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    f = open(sys.argv[1], "w")
    faulthandler.enable(file=f)
    print(threading.get_ident(), flush=True)
    def recurse(n):
        if n == 0:
            ctypes.string_at(0)
        recurse(n - 1)  # RECURSE
    recurse(150)  # MODULE
    """
)

_ABORT = textwrap.dedent(
    """\
    import faulthandler, os, resource, sys, threading
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    f = open(sys.argv[1], "w")
    faulthandler.enable(file=f)
    print(threading.get_ident(), flush=True)
    def crash():
        os.abort()  # ABORT
    crash()  # MODULE
    """
)


def _dump(directory: Path, name: str, source: str) -> Dump:
    script = directory / name
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(source)
    out = script.with_suffix(".txt")
    proc = _run(script, str(out))
    idents = [int(x) for x in proc.stdout.split()]
    return Dump(out.read_text(), source, script, proc.returncode, idents)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Dump]:
    base = tmp_path_factory.mktemp("faulthandler")
    cells = base / "ipykernel_4242"
    return {
        "threads": _dump(base, "threads.py", _THREADS),
        "deep": _dump(base, "deep.py", _DEEP),
        "segv": _dump(cells, "1111.py", _SEGV_RECURSION),
        "abort": _dump(cells, "2222.py", _ABORT),
    }


def _hex(ident: int) -> str:
    return f"0x{ident:016x}"


def test_parse_all_threads_dump(dumps: dict[str, Dump]) -> None:
    d = dumps["threads"]
    assert d.returncode == 0
    main_ident, worker_ident = d.idents
    threads = parse_faulthandler(d.text)
    assert len(threads) == 2
    by_id = {int(t.thread, 16): t for t in threads}
    assert set(by_id) == {main_ident, worker_ident}

    main, worker = by_id[main_ident], by_id[worker_ident]
    assert main.current and not worker.current
    assert main.fatal is None and worker.fatal is None
    assert not main.truncated and not worker.truncated
    script = str(d.script)
    # Innermost last: <module> -> outer -> inner.
    assert main.frames == (
        Frame(script, _line_of(d.source, "# MODULE"), "<module>"),
        Frame(script, _line_of(d.source, "# OUTER"), "outer"),
        Frame(script, _line_of(d.source, "# INNER"), "inner"),
    )
    # The worker's stack runs from threading's bootstrap down into Event.wait.
    assert worker.frames[0].function == "_bootstrap"
    assert worker.frames[-1].function == "wait"
    assert Frame(script, _line_of(d.source, "# WORKER"), "worker_wait") in worker.frames
    assert runaway_recursion(main) is None

    # The main thread is found by the agent's ident, else the current thread.
    assert pick_thread(threads, _hex(worker_ident)) is worker
    assert pick_thread(threads, _hex(main_ident)) is main
    assert pick_thread(threads, None) is main
    assert pick_thread([], None) is None


def test_parse_deep_dump_is_truncated(dumps: dict[str, Dump]) -> None:
    d = dumps["deep"]
    assert d.returncode == 0
    assert "\n  ...\n" in d.text or d.text.endswith("  ...\n")
    (thread,) = parse_faulthandler(d.text)
    assert thread.current and thread.truncated and thread.fatal is None
    assert len(thread.frames) == 100  # faulthandler keeps the 100 innermost frames
    assert thread.frames[-1] == Frame(str(d.script), _line_of(d.source, "# BOTTOM"), "recurse")
    assert all(f.function == "recurse" for f in thread.frames)
    assert all(f.line == _line_of(d.source, "# RECURSE") for f in thread.frames[:-1])
    assert runaway_recursion(thread) == ("recurse", 100)


def test_parse_crash_dump(dumps: dict[str, Dump]) -> None:
    d = dumps["segv"]
    assert d.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in d.text
    (thread,) = parse_faulthandler(d.text)
    assert thread.fatal == "Segmentation fault"
    assert thread.current and thread.truncated
    assert int(thread.thread, 16) == d.idents[0]
    assert len(thread.frames) == 100
    assert thread.frames[-1].function == "string_at"  # innermost last
    assert thread.frames[0] == Frame(str(d.script), _line_of(d.source, "# RECURSE"), "recurse")
    assert runaway_recursion(thread) == ("recurse", 99)

    a = dumps["abort"]
    assert a.returncode == -signal.SIGABRT
    (aborted,) = parse_faulthandler(a.text)
    assert aborted.fatal == "Aborted"
    assert not aborted.truncated and aborted.current
    assert [f.function for f in aborted.frames] == ["<module>", "crash"]
    assert runaway_recursion(aborted) is None


def test_parse_faulthandler_edge_cases() -> None:
    assert parse_faulthandler("") == []
    assert parse_faulthandler('garbage\n  File "x.py", line 1 in f\n') == []
    # A dump of one thread without all_threads names no thread.
    (one,) = parse_faulthandler(
        "Stack (most recent call first):\n"
        '  File "a.py", line 3 in g\n'
        '  File "a.py", line 9 in <module>\n'
    )
    assert one.thread == "0x0" and one.current
    assert one.frames == (Frame("a.py", 9, "<module>"), Frame("a.py", 3, "g"))
    # Two dumps appended one after another in one file.
    text = (
        "Current thread 0x00000000000000aa (most recent call first):\n"
        '  File "a.py", line 1 in f\n'
        "Current thread 0x00000000000000aa (most recent call first):\n"
        '  File "a.py", line 2 in f\n'
    )
    first, second = parse_faulthandler(text)
    assert first.frames[0].line == 1 and second.frames[0].line == 2


def test_cell_files_and_cell_line() -> None:
    assert is_cell_file("/tmp/ipykernel_123/456789.py")
    assert is_cell_file("<ipython-input-3-0123abcd>")
    assert not is_cell_file("/usr/lib/python3/site-packages/numpy/core.py")
    old = CellRun(1, 1, None, "", 0.0, ended=1.0, file="/tmp/ipykernel_1/1.py")
    running = CellRun(2, 2, None, "", 2.0)
    frames = [
        Frame("/tmp/ipykernel_1/1.py", 4, "<module>"),  # a function an earlier cell defined
        Frame("/tmp/ipykernel_1/2.py", 7, "<module>"),
        Frame("/tmp/ipykernel_1/2.py", 3, "helper"),
    ]
    assert cell_line(frames, running, [old]) == 7
    assert cell_line(frames, running, []) == 4
    named = CellRun(2, 2, None, "", 2.0, file="/tmp/ipykernel_1/2.py")
    assert cell_line(frames[2:], named, [old]) == 3
    assert cell_line(frames[2:], named, [old], truncated=True) is None


# ---------------------------------------------------------- naming cells and paths


@pytest.mark.parametrize(
    ("count", "index", "line", "expected"),
    [
        (3, 2, 5, "In [3], line 5"),  # the execution count wins over the position
        (3, None, None, "In [3]"),
        (None, 3, 2, "the 4th cell, line 2"),  # 0-based index 3: the 4th, markdown counted
        (None, 0, None, "the 1st cell"),
        (None, 1, None, "the 2nd cell"),
        (None, 2, None, "the 3rd cell"),
        (None, 10, None, "the 11th cell"),
        (None, 12, None, "the 13th cell"),
        (None, 21, None, "the 22nd cell"),
        (None, 110, None, "the 111th cell"),
        (None, None, 4, "the running cell, line 4"),
    ],
)
def test_one_way_to_name_a_cell(
    count: int | None, index: int | None, line: int | None, expected: str
) -> None:
    assert cell_place(count, index, line) == expected


@pytest.mark.parametrize(
    ("file", "count", "index", "expected"),
    [
        ("/tmp/ipykernel_14616/3954762231.py", 3, None, "In [3], line 7"),
        ("/tmp/ipykernel_14616/3954762231.py", None, 3, "the 4th cell, line 7"),
        ("/tmp/ipykernel_14616/3954762231.py", None, None, "a cell, line 7"),
        ("<ipython-input-12-0123abcd>", None, None, "In [12], line 7"),
        (
            "/opt/venv/lib/python3.11/site-packages/numpy/core/numeric.py",
            None,
            None,
            "numpy/core/numeric.py, line 7",
        ),
        ("/usr/lib/python3.11/json/decoder.py", None, None, "json/decoder.py, line 7"),
        (
            "/home/someone/projects/analysis/src/helpers/loaders.py",
            None,
            None,
            "/home/someone/projects/…/loaders.py, line 7",
        ),
    ],
)
def test_a_frame_is_named_by_its_cell_never_its_temp_file(
    file: str, count: int | None, index: int | None, expected: str
) -> None:
    assert frame_place(file, 7, count, index) == expected


def test_long_paths_are_shortened_in_sentences() -> None:
    source = "cgroup v1 memory limit of /sys/fs/cgroup/memory/process_api/58ba9e44ce9b/kd-3-0"
    assert short_paths(f"Or raise the limit: it is set by {source} (e.g. a container's).") == (
        "Or raise the limit: it is set by cgroup v1 memory limit of /sys/fs/cgroup/…/kd-3-0 "
        "(e.g. a container's)."
    )
    assert short_paths(f"({source}).") == "(cgroup v1 memory limit of /sys/fs/cgroup/…/kd-3-0)."
    short = "cgroup v2 memory.max of /sys/fs/cgroup/kd"
    assert short_paths(short) == short  # short enough to read
    url = "see https://example.org/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p"
    assert short_paths(url) == url  # not a path


def test_run_talks_to_an_ipykernel_over_ipc_where_the_path_fits(tmp_path: Path) -> None:
    ipykernel = ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    ipc = {"transport": "ipc", "ip": str(tmp_path / "ipc" / "kernel")}
    assert ipc_transport(str(tmp_path), ipykernel) == ipc
    # The sockets' folder is private: zmq makes the sockets themselves 0755.
    assert stat.S_IMODE((tmp_path / "ipc").stat().st_mode) == 0o700
    assert ipc_transport("/" + "d" * 120, ipykernel) == {}  # past a Unix socket's path: TCP
    assert ipc_transport(str(tmp_path), ["R", "--slave", "-e", "IRkernel::main()"]) == {}


# -------------------------------------------------------------------- diagnose


LIMIT = MemoryLimit(2 * GiB, "cgroup-v2", "cgroup v2 memory.max of /sys/fs/cgroup/kd", "/kd")
KERNEL_ARGV = ("/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "/tmp/kernel-1.json")


def _evidence(**changes: Any) -> Evidence:
    memory = changes.pop("memory", None) or MemoryEvidence(
        limit=LIMIT, peak_bytes=2 * GiB - MiB, kernel_peak_bytes=2 * GiB - 10 * MiB
    )
    fields: dict[str, Any] = {
        "kernel_argv": KERNEL_ARGV,
        "pid": 4321,
        "started": 1000.0,
        "ended": 1100.0,
        "exit_code": None,
        "signal": None,
        "requested": None,
        "agent_ready": True,
        "clean_exit": False,
        "memory": memory,
    }
    fields.update(changes)
    return Evidence(**fields)


def _running(count: int = 7, seq: int = 3, file: str | None = None) -> CellRun:
    return CellRun(seq, count, "abc", "x = [0] * 10**10", 1050.0, file=file)


def test_sigkill_with_oom_kill_is_out_of_memory() -> None:
    memory = MemoryEvidence(
        limit=LIMIT,
        timeline=((10.0, 100 * MiB), (60.0, GiB), (90.0, 2 * GiB - MiB)),
        peak_bytes=2 * GiB - MiB,
        kernel_peak_bytes=2 * GiB - 10 * MiB,
        oom_kills_before=0,
        oom_kills_after=1,
    )
    cell = _running()
    ev = _evidence(
        signal=signal.SIGKILL,
        memory=memory,
        cells=(cell,),
        state=State(seq=cell.seq, line=4),
    )
    d = diagnose(ev)
    assert d is not None
    assert d.cause == "out_of_memory"
    assert (
        d.summary
        == "Out of memory at In [7], line 4: the kernel grew to 2.0 GiB of the 2.0 GiB limit."
    )
    assert "2.0 GiB" in d.summary
    assert d.cell == cell and d.line == 4
    assert any("went from 0 to 1" in fact for fact in d.evidence)
    assert any("memory grew from 100 MiB to 2.0 GiB" in fact for fact in d.evidence)
    assert any("raise the limit" in tip for tip in d.advice)


def test_sigkill_without_oom_kill_is_killed() -> None:
    memory = MemoryEvidence(limit=LIMIT, oom_kills_before=2, oom_kills_after=2)
    ev = _evidence(signal=signal.SIGKILL, memory=memory)
    d = diagnose(ev)
    assert d is not None
    assert d.cause == "killed"
    assert "SIGKILL" in d.summary and "not out of memory" in d.summary
    assert any("did not change" in fact for fact in d.evidence)
    assert d.cell is None and d.line is None


def test_segfault_in_deep_recursion_is_stack_overflow(dumps: dict[str, Dump]) -> None:
    d = dumps["segv"]
    threads = tuple(parse_faulthandler(d.text))
    cell = _running(count=12)
    ev = _evidence(
        signal=signal.SIGSEGV,
        fatal=threads,
        cells=(cell,),
        # The truncated dump lacks the cell's own statement: the agent's line counts.
        state=State(seq=cell.seq, line=_line_of(d.source, "# MODULE"), main_thread=d.idents[0]),
    )
    diagnosis = diagnose(ev)
    assert diagnosis is not None
    assert diagnosis.cause == "stack_overflow"
    line = _line_of(d.source, "# MODULE")
    assert diagnosis.line == line
    assert f" at In [12], line {line}:" in diagnosis.summary
    assert diagnosis.summary.startswith("Stack overflow")
    assert diagnosis.stack == threads[0].frames
    assert any("99 of the 100 innermost frames are recurse()" in f for f in diagnosis.evidence)
    assert any("Segmentation fault" in f for f in diagnosis.evidence)
    assert any("only the 100 innermost frames" in f for f in diagnosis.evidence)


def test_sigabrt_is_native_crash_at_the_cells_line(dumps: dict[str, Dump]) -> None:
    a = dumps["abort"]
    threads = tuple(parse_faulthandler(a.text))
    cell = _running(count=4)
    ev = _evidence(
        signal=signal.SIGABRT,
        fatal=threads,
        cells=(cell,),
        state=State(main_thread=a.idents[0]),
    )
    d = diagnose(ev)
    assert d is not None
    assert d.cause == "native_crash"
    # Both frames are in the cell's file: the statement (<module>) and the function
    # the cell defined. Either is a line of the running cell.
    assert d.line == _line_of(a.source, "# MODULE")
    assert d.summary == (
        f"Native crash (SIGABRT) at In [4], line {d.line}: code outside Python crashed the kernel."
    )
    assert d.stack[-1].function == "crash"
    assert any("Fatal Python error: Aborted" in fact for fact in d.evidence)


def test_exit_code_after_start_is_exit() -> None:
    cell = _running(count=2)
    ev = _evidence(exit_code=3, cells=(cell,), state=State(seq=cell.seq, line=5))
    d = diagnose(ev)
    assert d is not None
    assert d.cause == "exit"
    assert d.summary == "The kernel exited by itself with code 3 at In [2], line 5."


def test_exit_before_start_is_startup_failure() -> None:
    # A real traceback, as the kernel's stderr would end.
    proc = subprocess.run(
        [sys.executable, "-c", "import kernel_doctor_no_such_module_kd"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    ev = _evidence(
        exit_code=1, agent_ready=False, ended=1000.5, stderr_tail="noise\n" + proc.stderr
    )
    d = diagnose(ev)
    assert d is not None
    assert d.cause == "startup_failure"
    error = "ModuleNotFoundError: No module named 'kernel_doctor_no_such_module_kd'"
    assert d.summary == f"The kernel failed to start: {error}"
    assert any(error in fact for fact in d.evidence)


def test_ends_that_are_not_deaths() -> None:
    assert diagnose(_evidence(requested="SIGTERM", signal=signal.SIGTERM)) is None
    assert diagnose(_evidence(requested="SIGTERM", exit_code=0)) is None
    assert diagnose(_evidence(exit_code=0, clean_exit=True)) is None
    lost = MemoryEvidence(limit=LIMIT, oom_kills_before=1, oom_kills_after=1)
    assert diagnose(_evidence(signal=signal.SIGKILL, memory=lost, supervisor_lost=True)) is None
    assert diagnose(_evidence(exit_code=None, memory=lost, supervisor_lost=True)) is None


def test_supervisor_lost_with_oom_kill_is_out_of_memory() -> None:
    full = ((5.0, LIMIT.limit_bytes - 1024),)
    memory = MemoryEvidence(limit=LIMIT, timeline=full, oom_kills_before=1, oom_kills_after=2)
    d = diagnose(_evidence(memory=memory, supervisor_lost=True))
    assert d is not None and d.cause == "out_of_memory"
    assert any("supervisor was killed" in fact for fact in d.evidence)
    # The counter is read at recovery, maybe long after: an idle kernel far below the
    # limit is not blamed for another process's OOM kill in a shared cgroup.
    idle = MemoryEvidence(
        limit=LIMIT, timeline=((5.0, 10 * 1024**2),), oom_kills_before=1, oom_kills_after=2
    )
    assert diagnose(_evidence(memory=idle, supervisor_lost=True)) is None


# ------------------------------------------------------------------ downsample


def test_downsample_short_series_is_kept() -> None:
    points = [(0.12345, 1), (1.0, 5)]
    assert downsample(points, 10) == ((0.123, 1), (1.0, 5))


def test_downsample_keeps_the_peak_and_the_end() -> None:
    points = [(i * 0.1, i % 97) for i in range(10_000)]
    points[4321] = (432.1, 10**9)
    out = downsample(points, 500)
    assert len(out) <= 500
    assert max(c for _, c in out) == 10**9
    assert out[-1] == (round(points[-1][0], 3), points[-1][1])
    assert [t for t, _ in out] == sorted(t for t, _ in out)


@PROPERTY
@given(
    counts=st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=400),
    limit=st.integers(min_value=2, max_value=60),
)
def test_downsample_property(counts: list[int], limit: int) -> None:
    points = [(i * 0.25, c) for i, c in enumerate(counts)]
    out = downsample(points, limit)
    assert len(out) <= limit
    assert max(c for _, c in out) == max(counts)
    assert out[-1][1] == counts[-1]
    assert {c for _, c in out} <= set(counts)


# ------------------------------------------------------------------- StateFile


def test_state_file_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / STATE)
    writer = StateFile(path, writable=True)
    try:
        assert os.path.getsize(path) == STATE_SIZE
        reader = StateFile(path, writable=False)
        try:
            assert reader.read() is None  # nothing written yet
            write(writer, {"seq": 1, "busy": True, "line": 3, "frame": ["f.py", 3, "g"]})
            assert reader.read() == State(seq=1, busy=True, line=3, frame=("f.py", 3, "g"))
            write(writer, {"seq": 2, "busy": False})
            assert reader.read() == State(seq=2, busy=False)
            write(writer, {"blob": "x" * STATE_SIZE})
            assert reader.read() == State()  # too long: a record that says nothing
            write(writer, {"seq": "9", "busy": 1, "frame": ["f.py"]})  # wrong types
            assert reader.read() == State()
        finally:
            reader.close()
        write(writer, {"seq": 9, "line": 1})
    finally:
        writer.close()
    assert read_state(str(tmp_path)) == State(seq=9, line=1)


def write(state: StateFile, record: dict[str, object]) -> None:
    state.write_bytes(json.dumps(record).encode())


def test_state_file_binary_part_overlays_the_json(tmp_path: Path) -> None:
    # The agent writes a cell's start and end and each statement's line in binary, and
    # the watcher's positions in the JSON part: a reader sees the newest, one State.
    path = str(tmp_path / STATE)
    writer = StateFile(path, writable=True)
    reader = StateFile(path, writable=False)
    try:
        writer.write_bytes(b'{"pid":7,"main_thread":9}', t=10.0)
        writer.write_cell(busy=False, seq=0, started=None, t=10.0)
        assert reader.read() == State(pid=7, main_thread=9, seq=0, t=10.0)

        writer.write_cell(busy=True, seq=1, started=11.0, t=11.0)
        assert reader.read() == State(pid=7, main_thread=9, busy=True, seq=1, started=11.0, t=11.0)
        name = "/tmp/ipykernel_1/é.py"
        writer.write_statement(name.encode(), 3, 11.5)
        at_statement = State(
            pid=7, main_thread=9, busy=True, seq=1, started=11.0, t=11.5,
            file=name, line=3, frame=(name, 3, "<module>"),
        )  # fmt: skip
        assert reader.read() == at_statement

        # The watcher's deeper frame, then a phase written without a position: the
        # frame stays the watcher's until the next statement.
        watcher = b',"file":"c.py","line":4,"frame":["lib.py",80,"grow"]'
        writer.write_bytes(b'{"pid":7,"main_thread":9' + watcher + b"}", position=True, t=12.0)
        deeper = State(
            pid=7, main_thread=9, busy=True, seq=1, started=11.0, t=12.0,
            file="c.py", line=4, frame=("lib.py", 80, "grow"),
        )  # fmt: skip
        assert reader.read() == deeper
        writer.write_bytes(b'{"pid":7,"main_thread":9,"phase":"traceback"' + watcher + b"}")
        assert reader.read() == State(**{**vars(deeper), "phase": "traceback"})
        writer.write_statement(name.encode(), 5, 12.5)
        moved = {"t": 12.5, "line": 5, "frame": (name, 5, "<module>"), "phase": "traceback"}
        assert reader.read() == State(**{**vars(at_statement), **moved})

        # The cell's end: no position, whatever the JSON part still holds.
        writer.write_cell(busy=False, seq=1, started=None, t=13.0)
        assert reader.read() == State(pid=7, main_thread=9, seq=1, t=13.0, phase="traceback")
        # A second cell's first statement in another file: the whole new name.
        writer.write_cell(busy=True, seq=2, started=14.0, t=14.0)
        writer.write_statement(b"/tmp/x.py", 1, 14.0)
        state = reader.read()
        assert state is not None and state.file == "/tmp/x.py" and state.seq == 2
        assert reader.thread_starts() == 0  # the binary part leaves the count alone
    finally:
        reader.close()
        writer.close()


def test_cell_lines_are_the_records_json() -> None:
    from kernel_doctor.agent.protocol import CellRecord

    lines = st.none() | st.integers(0, 99)
    texts = st.none() | st.text(max_size=80)
    ints = st.none() | st.integers(0, 2**40)

    @given(
        event=st.sampled_from(["start", "end", "ready", "exit"]),
        t=st.floats(allow_nan=False, allow_infinity=False),
        seq=ints,
        count=ints,
        cell_id=texts,
        source=texts,
        file=texts,
        error=st.none() | st.fixed_dictionaries({"type": st.text(max_size=20), "line": lines}),
        pid=ints,
    )
    @settings(max_examples=300, deadline=None)
    def check(
        event: str, t: float, seq: int | None, count: int | None, cell_id: str | None,
        source: str | None, file: str | None, error: Any, pid: int | None,
    ) -> None:  # fmt: skip
        record = CellRecord(event, t, seq, count, cell_id, source, file, error, pid)
        line = record.to_line()
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
        fields = {
            "event": event, "t": t, "seq": seq, "execution_count": count, "cell_id": cell_id,
            "source": source, "file": file, "error": error, "pid": pid,
        }  # fmt: skip
        assert json.loads(line) == {k: v for k, v in fields.items() if v is not None}
        if error is None:  # (a record's error gains defaults as it is read)
            assert CellRecord.from_json(json.loads(line)) == record

    check()


def test_read_state_without_a_state_file(tmp_path: Path) -> None:
    assert read_state(str(tmp_path)) is None
    assert read_state(str(tmp_path / "missing")) is None
    (tmp_path / STATE).write_bytes(b"")  # made but never sized by the agent
    assert read_state(str(tmp_path)) is None
    with pytest.raises(FileNotFoundError):
        StateFile(str(tmp_path / "nope" / STATE), writable=False)


def test_state_file_reader_rejects_foreign_data(tmp_path: Path) -> None:
    (tmp_path / STATE).write_bytes(b"JUNK" + b"\0" * (STATE_SIZE - 4))
    assert read_state(str(tmp_path)) is None


def test_rss_at_kill_reads_the_oom_killers_line() -> None:
    from kernel_doctor.supervisor.collect import rss_at_kill

    line = (
        "Memory cgroup out of memory: Killed process 4242 (python) total-vm:1862796kB, "
        "anon-rss:1045724kB, file-rss:16648kB, shmem-rss:8kB, UID:0 pgtables:2228kB"
    )
    assert rss_at_kill((line,), 4242) == (1045724 + 16648 + 8) * 1024
    assert rss_at_kill((line,), 4243) is None  # another process's kill
    assert rss_at_kill(("segfault at 0 ip …",), 4242) is None


def test_kernel_log_records_are_timed() -> None:
    # /dev/kmsg stamps records in microseconds of CLOCK_MONOTONIC; lines logged
    # before the kernel started (an earlier process with the same pid) are skipped.
    from kernel_doctor.probe.procfs import _kmsg_seconds

    record = "6,1234,5123456789,-;Memory cgroup out of memory: Killed process 42 (python)"
    assert _kmsg_seconds(record) == 5123.456789
    assert _kmsg_seconds("garbage without fields") == float("inf")


def test_a_clean_end_not_yet_written_is_read_from_the_state() -> None:
    from kernel_doctor.evidence import CellRun
    from kernel_doctor.supervisor.collect import ended_by_state

    cells = (CellRun(seq=1, execution_count=1, cell_id=None, source="x", started=5.0),)
    ended = ended_by_state(cells, State(busy=False, seq=1, t=6.5))
    assert ended[-1].ended == 6.5
    # Busy, or idle after another cell: the cell is still the running one.
    assert ended_by_state(cells, State(busy=True, seq=1, t=6.5)) == cells
    assert ended_by_state(cells, State(busy=False, seq=0, t=6.5)) == cells


def test_native_crash_advice_names_the_package_below_the_cell_not_ipython() -> None:
    from kernel_doctor.diagnosis.advice import _native_module
    from kernel_doctor.evidence import Frame

    ipython = "/usr/lib/python3.11/site-packages/IPython/core/interactiveshell.py"
    cell = "/tmp/ipykernel_42/123456789.py"
    ctypes = "/usr/lib/python3.11/ctypes/__init__.py"
    numpy = "/env/lib/python3.11/site-packages/numpy/core/fromnumeric.py"
    stack = (Frame(ipython, 3577, "run_code"), Frame(cell, 2, "<module>"))
    assert _native_module((*stack, Frame(ctypes, 519, "string_at")), "") == "ctypes"
    assert _native_module((*stack, Frame(numpy, 86, "_wrapreduction")), "") == "numpy"
    assert _native_module(stack, "") is None  # the crash was in the cell's own line


def test_guard_threshold_settings() -> None:
    from kernel_doctor.supervisor.guard import threshold

    limit = 1000 * 1024**2
    assert threshold(None, limit) == (int(limit * 0.9), "90%")
    assert threshold("80%", limit) == (int(limit * 0.8), "80%")
    assert threshold("500m", limit) == (500 * 1024**2, "500M")  # as kernel-doctor writes it
    assert threshold("5G", limit) == (limit, "5G")  # never above the limit itself
    assert threshold("off", limit) is None
    assert threshold("banana", limit) == (int(limit * 0.9), "90%")  # never silently off


def test_guard_trips_on_growth_during_a_cell_not_on_a_full_kernel(tmp_path: Path) -> None:
    import os
    import signal as signals

    from kernel_doctor.probe.base import MemoryLimit
    from kernel_doctor.supervisor.guard import Guard

    MiB = 1024**2
    limit = MemoryLimit(300 * MiB, "cgroup-v1", "cgroup v1 memory limit of /x", "/x")
    guard = Guard("90%", limit, str(tmp_path))
    pid = os.getpid()
    old = signals.signal(signals.SIGUSR1, lambda *a: None)  # SigCgt says we catch it
    try:
        usr1 = int(signals.SIGUSR1)
        assert not guard.check(State(busy=True, seq=1), 280 * MiB, pid, usr1)  # full at start
        assert not guard.check(State(busy=True, seq=1), 285 * MiB, pid, usr1)  # small growth
        assert not guard.check(State(busy=False, seq=1), 290 * MiB, pid, usr1)
        assert not guard.check(State(busy=True, seq=2), 200 * MiB, pid, usr1)  # new cell
        assert not guard.check(State(busy=True, seq=2), 260 * MiB, pid, usr1)  # below 90 %
        assert guard.check(State(busy=True, seq=2), 275 * MiB, pid, usr1)  # grew past it
        written = (tmp_path / "guard.json").read_text()
        assert '"seq": 2' in written and '"usage_bytes": 288358400' in written
        assert not guard.check(State(busy=True, seq=2), 280 * MiB, pid, usr1)  # not again yet
    finally:
        signals.signal(signals.SIGUSR1, old)


def test_doctor_html_lists_indented_lines_and_escapes() -> None:
    from kernel_doctor.agent.magics import to_html

    html = to_html("Memory: 10 MiB of 1 GiB\nBiggest variables:\n  a<b>: 5 MiB\n  c: 1 MiB")
    assert html == (
        '<div class="kernel-doctor"><p><b>Memory: 10 MiB of 1 GiB</b></p>'
        "<p><b>Biggest variables:</b></p><ul><li><code>a&lt;b&gt;: 5 MiB</code></li>"
        "<li><code>c: 1 MiB</code></li></ul></div>"
    )


def test_guard_counts_a_cells_growth_from_the_sample_before_it(tmp_path: Path) -> None:
    import os
    import signal as signals

    from kernel_doctor.probe.base import MemoryLimit
    from kernel_doctor.supervisor.guard import Guard

    MiB = 1024**2
    limit = MemoryLimit(300 * MiB, "cgroup-v1", "cgroup v1 memory limit of /x", "/x")
    guard = Guard("90%", limit, str(tmp_path))
    pid = os.getpid()
    old = signals.signal(signals.SIGUSR1, lambda *a: None)
    try:
        usr1 = int(signals.SIGUSR1)
        assert not guard.check(State(busy=False, seq=1), 200 * MiB, pid, usr1)  # between
        # The cell's first sample comes after a fast fill: still its own growth.
        assert guard.check(State(busy=True, seq=2), 285 * MiB, pid, usr1)
    finally:
        signals.signal(signals.SIGUSR1, old)


def _current(ceiling: Ceiling) -> int | None:
    return ceiling.current


def test_allocation_ceiling_follows_the_kernel_and_restores_its_limit() -> None:
    import resource
    import subprocess

    from kernel_doctor.supervisor.ceiling import STEP, Ceiling, stack_cache_works

    MiB, GiB = 1024**2, 1024**3
    user_limit = 8 * GiB  # a soft limit the user set: the ceiling stays below it
    child = subprocess.Popen(
        ["sleep", "30"],
        preexec_fn=lambda: resource.setrlimit(
            resource.RLIMIT_DATA, (user_limit, resource.RLIM_INFINITY)
        ),
    )
    try:
        ceiling = Ceiling(child.pid, 300 * MiB)
        # Nothing above the room, where glibc's stack cache gives threads their stacks.
        assert ceiling.reserve == 0 if stack_cache_works() else ceiling.reserve >= GiB
        ceiling.update(100 * MiB, 200 * MiB)  # 100 MiB left of the limit
        expected = 100 * MiB + 100 * MiB + ceiling.reserve
        assert resource.prlimit(child.pid, resource.RLIMIT_DATA)[0] == expected
        ceiling.update(100 * MiB + STEP // 2, 200 * MiB)  # too small a move to set
        assert ceiling.current == expected
        ceiling.update(100 * MiB, 0)  # room grew: the ceiling follows
        assert ceiling.current == 100 * MiB + 300 * MiB + ceiling.reserve
        ceiling.update(16 * 1024**3, 0)  # never above the user's own limit
        assert ceiling.current == user_limit
        ceiling.release()
        assert resource.prlimit(child.pid, resource.RLIMIT_DATA) == (
            user_limit,
            resource.RLIM_INFINITY,
        )
        assert _current(ceiling) is None  # (mypy holds on to the narrowing above)
        late = Ceiling(child.pid, 300 * MiB)
    finally:
        child.kill()
        child.wait()
    late.update(MiB, MiB)  # the kernel has exited: this layer turns off, quietly
    assert late.error is not None and late.current is None


def test_allocation_failures_the_agent_recognises() -> None:
    from kernel_doctor.agent.guard import _request, is_allocation_failure, refusal_note

    torch = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 17179869184 bytes. Error code 12"
    )
    assert is_allocation_failure(torch) and _request(torch) == 16 * 1024**3
    assert is_allocation_failure(MemoryError()) and _request(MemoryError()) is None
    assert not is_allocation_failure(RuntimeError("something else"))
    note = refusal_note(
        {
            "usage_bytes": 100 * 1024**2,
            "limit_bytes": 300 * 1024**2,
            "limit_source": "x",
            "request_bytes": 16 * 1024**3,
        }
    )
    assert note.startswith("kernel-doctor's memory guard refused this allocation (16 GiB)")
    assert "leaves 200 MiB, with 100 MiB in use" in note


def test_last_sample_reads_the_newest_complete_one(tmp_path: Path) -> None:
    from kernel_doctor.agent.protocol import SAMPLE, SAMPLES, last_sample, read_samples

    assert last_sample(str(tmp_path)) is None
    path = tmp_path / SAMPLES
    path.write_bytes(b"".join(SAMPLE.pack(t, 100 * t, 10 * t) for t in (1, 2, 3)))
    assert last_sample(str(tmp_path)) == read_samples(str(tmp_path))[-1] == (3.0, 300, 30)
    with open(path, "ab") as f:
        f.write(SAMPLE.pack(4, 400, 40)[:5])  # a sample being written
    assert last_sample(str(tmp_path)) == (3.0, 300, 30)


def test_sizing_a_variable_at_a_trip_never_copies_it() -> None:
    # It runs when memory is nearly gone: a copy of a big container was what killed
    # the kernel in benchmarks/guard.py (list-growth at 512 MiB, py-strings at 4 GiB).
    import tracemalloc

    from kernel_doctor.agent.guard import _size

    items = list(range(10**6))
    table = dict.fromkeys(range(10**5), "x")
    tracemalloc.start()
    try:
        sizes = _size(items), _size(table)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak  # a list(items) would be 8 MB
    assert sizes[0] > 8 * 10**6 and sizes[1] > 2 * 10**6
