"""Stored reports: the typed model and its JSON, pruning, the previous-death notice.

Reports here are real ones: made by ``death_report`` from evidence and a diagnosis,
as the supervisor makes them, and stored by ``store`` (the private reports folder,
0600 files), in a data dir of the test's own (0700)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from kernel_doctor.agent.protocol import Meta
from kernel_doctor.diagnosis import Diagnosis
from kernel_doctor.evidence import CellRun, Evidence, Frame, MemoryEvidence
from kernel_doctor.paths import reports_dir
from kernel_doctor.probe.base import MemoryLimit
from kernel_doctor.reports.history import read_report
from kernel_doctor.reports.model import BadReport, Report, death_report, empty_report
from kernel_doctor.reports.notice import find_previous, leave_notice, notice_text
from kernel_doctor.reports.store import encode, prune, store

MiB = 1024**2
GiB = 1024**3
SUMMARY = "Out of memory at In [3], line 2: the kernel grew to 300 MiB of the 300 MiB limit."
LIMIT_SOURCE = "cgroup v1 memory limit of /sys/fs/cgroup/memory/kd"
# Every key of a stored death report, in the order written (the README contract).
DEATH_KEYS = [
    "kernel_doctor",
    "id",
    "created",
    "outcome",
    "cause",
    "summary",
    "signal",
    "exit_code",
    "cell",
    "line",
    "stack",
    "memory",
    "evidence",
    "advice",
    "kernel",
    "stderr_tail",
]


def death(pid: int, ended: float | None = None, **kernel: Any) -> tuple[Evidence, Diagnosis]:
    """What the supervisor knows of an out-of-memory death at In [3], line 2."""
    ended = time.time() if ended is None else ended
    cell = CellRun(1, 3, "c3", "x = 1\ny = bytearray(10**9)", ended - 2, None, "<ipython-input-3>")
    ev = Evidence(
        kernel_argv=("python", "-m", "ipykernel_launcher", "-f", "k.json"),
        pid=pid,
        started=ended - 10,
        ended=ended,
        exit_code=None,
        signal=9,
        requested=None,
        agent_ready=True,
        clean_exit=False,
        memory=MemoryEvidence(
            limit=MemoryLimit(300 * MiB, "cgroup-v1", LIMIT_SOURCE),
            timeline=((0.0, 50 * MiB), (9.5, 300 * MiB)),
            peak_bytes=300 * MiB,
            kernel_peak_bytes=290 * MiB,
        ),
        cells=(cell,),
        guard={"enabled": True, "threshold_bytes": 270 * MiB, "signals": 0},
        stderr_tail="Killed\n",
        **kernel,
    )
    dx = Diagnosis(
        "out_of_memory",
        SUMMARY,
        (f"the kernel (pid {pid}) was ended by SIGKILL",),
        ("Process the data in chunks.",),
        cell,
        2,
        (Frame("<ipython-input-3>", 2, "<module>"),),
    )
    return ev, dx


def real_report(stamp: str, pid: int, ended: float | None = None, **kernel: Any) -> Report:
    """The report the supervisor makes of that death, with id ``<stamp>-<pid>``."""
    ev, dx = death(pid, ended, **kernel)
    return death_report(ev, dx, f"{stamp}-{pid}")


def write_report(directory: Path, stamp: str, pid: int, **kernel: Any) -> Path:
    """A real report stored where the supervisor stores it; its path."""
    report = real_report(stamp, pid, **kernel)
    path = directory / f"{report.id}.json"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(encode(report))
    path.chmod(0o600)
    return path


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runtime"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(path))
    for name in ("KERNEL_DOCTOR_KEEP_REPORTS", "KERNEL_DOCTOR_KEEP_DAYS"):
        monkeypatch.delenv(name, raising=False)
    return path


@pytest.fixture
def reports(runtime: Path) -> Path:
    return Path(reports_dir())


# -- the model ----------------------------------------------------------------------


def test_death_report_json_keeps_the_contract() -> None:
    report = real_report("20261125-120000", 4242, ended=1795600000.0, session_name="a.ipynb")
    doc = report.to_json()
    assert list(doc) == DEATH_KEYS
    assert doc["outcome"] == "kernel_died" and doc["cause"] == "out_of_memory"
    assert doc["signal"] == "SIGKILL" and doc["exit_code"] is None
    assert doc["cell"] == {
        "index": None,
        "execution_count": 3,
        "id": "c3",
        "source": "x = 1\ny = bytearray(10**9)",
    }
    assert doc["line"] == 2
    assert doc["stack"] == [
        {
            "file": "<ipython-input-3>",
            "line": 2,
            "function": "<module>",
            "cell_index": None,
            "execution_count": 3,
        }
    ]
    assert doc["memory"] == {
        "peak_bytes": 300 * MiB,
        "kernel_peak_bytes": 290 * MiB,
        "limit_bytes": 300 * MiB,
        "limit_source": LIMIT_SOURCE,
        "limit_kind": "cgroup-v1",
        "timeline": [[0.0, 50 * MiB], [9.5, 300 * MiB]],
        "threshold_bytes": 270 * MiB,
        "cell_starts": [[8.0, 3]],
    }
    assert list(doc["kernel"]) == [
        "pid", "argv", "connection_file", "name", "session_name", "started", "ended"
    ]  # fmt: skip
    assert doc["kernel"]["session_name"] == "a.ipynb" and doc["kernel"]["ended"] == 1795600000.0
    # What is written is what is read back, through JSON, whole.
    text = json.dumps(doc, indent=1)
    assert Report.from_json(json.loads(text)) == report
    assert json.dumps(Report.from_json(json.loads(text)).to_json(), indent=1) == text


def test_run_reports_round_trip_with_guard_hang_and_interrupt() -> None:
    doc = empty_report("timeout", "In [1] ran longer than the 1 s timeout.")
    assert list(doc) == DEATH_KEYS[:-2]  # no kernel, no stderr tail: nothing died
    doc["guard"] = {"tripped": True, "layer": "threshold", "usage_bytes": 9, "limit_bytes": 10}
    doc["hang"] = {"summary": "s", "verdict": "burning CPU", "phase": None, "threads": [{"tid": 1}]}
    doc["interrupt"] = {"sent": True, "worked": False}
    doc["from_a_newer_version"] = {"kept": [1, 2]}
    report = Report.from_json(json.loads(json.dumps(doc)))
    assert report.hang is not None and report.hang.threads == [{"tid": 1}]
    assert report.to_json() == doc and list(report.to_json()) == list(doc)


def test_missing_keys_take_their_empty_values() -> None:
    report = Report.from_json({"outcome": "kernel_died", "id": "x"})
    doc = report.to_json()
    assert doc["signal"] is None and doc["cell"] is None and doc["stack"] == []
    assert doc["memory"]["timeline"] == [] and doc["memory"]["limit_bytes"] is None
    assert "kernel" not in doc and "guard" not in doc


@pytest.mark.parametrize(
    ("document", "field", "message"),
    [
        (None, "", "expected a JSON object, found null"),
        ([], "", "expected a JSON object, found a list"),
        ({}, "outcome", "outcome: missing (every report has one)"),
        ({"outcome": 3}, "outcome", "outcome: expected a string, found a number"),
        (
            {"outcome": "ok", "cause": ["oom"]},
            "cause",
            "cause: expected a string or null, found a list",
        ),
        (
            {"outcome": "ok", "memory": {"peak_bytes": "300M"}},
            "memory.peak_bytes",
            "memory.peak_bytes: expected an integer or null, found a string",
        ),
        (
            {"outcome": "ok", "memory": {"timeline": [[0.0, 1], [1.0]]}},
            "memory.timeline[1]",
            "memory.timeline[1]: expected [seconds, bytes], found a list",
        ),
        (
            {"outcome": "ok", "stack": [{"file": "f", "line": True, "function": "g"}]},
            "stack[0].line",
            "stack[0].line: expected an integer or null, found true/false",
        ),
        (
            {"outcome": "ok", "advice": ["a", None]},
            "advice[1]",
            "advice[1]: expected a string, found null",
        ),
        (
            {"outcome": "ok", "kernel": "4242"},
            "kernel",
            "kernel: expected an object or null, found a string",
        ),
        (
            {"outcome": "ok", "kernel": {"ended": "today"}},
            "kernel.ended",
            "kernel.ended: expected a number or null, found a string",
        ),
        (
            {"outcome": "ok", "interrupt": {"sent": 1}},
            "interrupt.sent",
            "interrupt.sent: expected true or false, found a number",
        ),
    ],
)
def test_wrong_types_are_named(document: object, field: str, message: str) -> None:
    with pytest.raises(BadReport) as caught:
        Report.from_json(document)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == field
    assert str(caught.value) == message


# -- storing and pruning --------------------------------------------------------------


def test_stored_reports_are_private(reports: Path) -> None:
    path = Path(store(real_report("20261125-120000", 4242)))
    assert path == reports / "20261125-120000-4242.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(reports.stat().st_mode) == 0o700
    assert stat.S_IMODE(reports.parent.stat().st_mode) == 0o700
    assert list(json.loads(path.read_text())) == DEATH_KEYS


def test_prune_keeps_the_newest_and_the_young(
    reports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [write_report(reports, f"20261125-1200{i:02d}", 100 + i) for i in range(6)]
    (reports / "notes.txt").write_text("not ours")
    old = time.time() - 40 * 86400
    os.utime(paths[1], (old, old))
    monkeypatch.setenv("KERNEL_DOCTOR_KEEP_REPORTS", "4")
    removed = prune(str(reports))
    # Newest first: 5, 4, 3, 2 are kept by count; 1 is too old anyway, 0 past the count.
    assert sorted(removed) == sorted(str(p) for p in (paths[0], paths[1]))
    assert sorted(p.name for p in reports.iterdir()) == sorted(
        [*(p.name for p in paths[2:]), "notes.txt"]
    )
    monkeypatch.setenv("KERNEL_DOCTOR_KEEP_DAYS", "0")
    assert len(prune(str(reports), now=time.time() + 10)) == 4


# -- the previous death's notice ------------------------------------------------------


def kernel_meta(
    connection_file: str | None = None, session_name: str | None = None, kernel_pid: int = 1
) -> Meta:
    """What a new kernel's supervisor knows at its start, as far as the notice needs."""
    return Meta(
        supervisor_pid=1,
        supervisor_start=None,
        kernel_pid=kernel_pid,
        started=time.time(),
        connection_file=connection_file,
        session_name=session_name,
    )


def test_previous_death_is_found_for_the_same_connection_file_once(reports: Path) -> None:
    write_report(reports, "20261125-120000", 4242, connection_file="/rt/kernel-abc.json")
    write_report(reports, "20261125-120001", 4343, connection_file="/rt/kernel-other.json")
    meta = kernel_meta(connection_file="/rt/kernel-abc.json", kernel_pid=5000)
    found = find_previous(meta)
    assert found is not None and found.id == "20261125-120000-4242"
    assert find_previous(meta) is None  # claimed: never shown twice


def test_previous_death_by_session_name(reports: Path) -> None:
    write_report(reports, "20261125-120000", 4242, session_name="/home/u/a.ipynb")
    assert (
        find_previous(kernel_meta(connection_file="/rt/new.json", session_name="/x.ipynb")) is None
    )
    found = find_previous(
        kernel_meta(connection_file="/rt/new.json", session_name="/home/u/a.ipynb")
    )
    assert found is not None and found.id == "20261125-120000-4242"


def test_no_notice_without_a_way_to_tell_or_for_old_deaths(reports: Path) -> None:
    path = write_report(reports, "20261125-120000", 4242, connection_file="/rt/k.json")
    assert find_previous(kernel_meta()) is None  # nothing to match by: when unsure, don't show
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert find_previous(kernel_meta(connection_file="/rt/k.json")) is None


@pytest.mark.parametrize(
    "content",
    [
        b"null",
        b"[]",
        b'{"outcome": "kernel_died", "id": "20261125-120001-4343", "kernel": null}',
        b'{"outcome": "kernel_died", "id": "20261125-120001-4343", "kernel": {"pid": "x"}}',
        b'{"outcome": "kernel_died", "id": "../../elsewhere", "kernel": {}}',
        b"\xff not json",
    ],
)
def test_a_bad_newer_report_never_stops_the_notice(reports: Path, content: bytes) -> None:
    # Item 10: a JSON null here made find_previous raise, and every supervised kernel
    # started afterwards ran unsupervised.
    write_report(reports, "20261125-120000", 4242, connection_file="/rt/k.json")
    (reports / "20261125-120001-4343.json").write_bytes(content)
    found = find_previous(kernel_meta(connection_file="/rt/k.json", kernel_pid=5000))
    assert found is not None and found.id == "20261125-120000-4242"
    assert sorted(p.name for p in reports.glob(".*")) == [".20261125-120000-4242.shown"]


def test_notice_is_left_in_the_session(reports: Path, tmp_path: Path) -> None:
    write_report(reports, "20261125-120000", 4242, connection_file="/rt/k.json")
    session = tmp_path / "session"
    session.mkdir(mode=0o700)
    assert leave_notice(str(session), kernel_meta(connection_file="/rt/k.json"))
    notice = session / "notice.json"
    assert stat.S_IMODE(notice.stat().st_mode) == 0o600
    text = json.loads(notice.read_text())["text"]
    assert text == notice_text(read_report(str(reports / "20261125-120000-4242.json")))


def test_the_notice_leads_with_what_to_do_and_ends_its_line() -> None:
    ev, dx = death(4242, ended=time.mktime((2026, 11, 25, 14, 3, 12, 0, 0, -1)))
    long_source = "cgroup v1 memory limit of /sys/fs/cgroup/memory/kubepods/burstable/pod1234/kd-1"
    memory = dataclasses.replace(ev.memory, limit=MemoryLimit(300 * MiB, "cgroup-v1", long_source))
    report = death_report(dataclasses.replace(ev, memory=memory), dx, "20261125-140312-4242")
    # The previous kernel's death, as the next cell shows it: the full path is in the
    # report, the notice shortens it; the cell's own output starts on a line of its own.
    assert notice_text(report) == (
        "kernel-doctor: the previous kernel of this notebook died at 14:03:12.\n"
        "  Out of memory at In [3], line 2: the kernel grew to 300 MiB of the 300 MiB limit.\n"
        "  What to do: Process the data in chunks.\n"
        "  Memory: peak 300 MiB of 300 MiB (cgroup v1 memory limit of /sys/fs/cgroup/…/kd-1).\n"
        "  Its variables are gone: this is a new kernel, started afresh.\n"
        "  Full report: %doctor show 20261125-140312-4242, or `kernel-doctor show "
        "20261125-140312-4242` in a terminal.\n"
    )


def test_notice_text_without_memory_or_advice() -> None:
    report = Report("kernel_died", "The kernel exited by itself with code 3.", id="x")
    text = notice_text(report)
    assert "Memory:" not in text and "What to do:" not in text
    assert "The kernel exited by itself with code 3." in text
    assert text.endswith(" in a terminal.\n")  # the cell's own output starts a new line


def test_notice_text_escapes_terminal_sequences() -> None:
    report = Report("kernel_died", "Died \x1b]0;owned\x07 here.", id="x")
    assert "  Died \\x1b]0;owned\\x07 here." in notice_text(report).splitlines()


# -- the human rendering ------------------------------------------------------------


LONG_SOURCE = "cgroup v1 memory limit of /sys/fs/cgroup/memory/kubepods/burstable/pod1234/kd-1"


def long_path_report() -> Report:
    """A real death report whose limit has a long cgroup path, with a frame in a
    function an earlier cell defined (its cell not on record: "a cell")."""
    ev, dx = death(4242, ended=time.mktime((2026, 11, 25, 14, 3, 12, 0, 0, -1)))
    limit = MemoryLimit(300 * MiB, "cgroup-v1", LONG_SOURCE)
    ev = dataclasses.replace(ev, memory=dataclasses.replace(ev.memory, limit=limit))
    dx = dataclasses.replace(
        dx,
        advice=("Process the data in chunks.", f"Or raise the limit: it is {LONG_SOURCE}."),
        stack=(
            Frame("<ipython-input-3-ab12>", 2, "<module>"),
            Frame("/tmp/ipykernel_4/1.py", 5, "g"),
        ),
    )
    return death_report(ev, dx, "20261125-140312-4242")


def panel_lines(report: Report, verbose: bool) -> list[str]:
    """The rendered panel's lines, without its border and trailing blanks."""
    import io

    from rich.console import Console

    from kernel_doctor.reports.render import render

    out = io.StringIO()
    render(report, Console(file=out, width=200, color_system=None), verbose=verbose)
    return [line.strip("│").rstrip() for line in out.getvalue().splitlines()[1:-1]]


def test_the_report_leads_with_what_happened_and_what_to_do() -> None:
    assert panel_lines(long_path_report(), verbose=False) == [
        " Out of memory at In [3], line 2: the kernel grew to 300 MiB of the 300 MiB limit.",
        "",
        " what to do",
        "   → Process the data in chunks.",
        "   → Or raise the limit: it is cgroup v1 memory limit of /sys/fs/cgroup/…/kd-1.",
        "",
        " In [3], line 2",
        "   1 x = 1",
        " ❱ 2 y = bytearray(10**9)",
        "",
        " memory: peak 300 MiB of 300 MiB (cgroup v1 memory limit of /sys/fs/cgroup/…/kd-1)",
        " ▁█  0–300 MiB over 9.5 s",
        "",
        " stack (innermost last)",
        "   <module>  In [3], line 2",
        "   g  a cell, line 5",
        "",
        " the evidence and full paths: kernel-doctor show 20261125-140312-4242 --verbose",
    ]


@pytest.mark.parametrize(
    ("timeline", "limit", "scale"),
    [
        ([(0.0, 50 * MiB), (12.2, 200 * MiB)], 300 * MiB, "0–300 MiB over 12 s"),
        ([(0.0, 50 * MiB), (5.26, 600 * MiB)], 512 * MiB, "0–600 MiB over 5.3 s"),
        ([(0.1, 2 * GiB), (200.0, 3 * GiB)], None, "0–3.0 GiB over 3 min 20 s"),
        ([(0.1, 1), (7500.0, 2)], 4 * GiB, "0–4.0 GiB over 2 h 5 min"),
        ([], 4 * GiB, ""),
    ],
)
def test_the_sparkline_says_its_scale(
    timeline: list[tuple[float, int]], limit: int | None, scale: str
) -> None:
    from kernel_doctor.reports.render import sparkline_scale

    assert sparkline_scale(timeline, limit) == scale


def test_verbose_shows_the_evidence_and_full_paths() -> None:
    lines = panel_lines(long_path_report(), verbose=True)
    assert f"   → Or raise the limit: it is {LONG_SOURCE}." in lines
    assert f" memory: peak 300 MiB of 300 MiB ({LONG_SOURCE})" in lines
    evidence = lines.index(" evidence")
    assert lines[evidence + 1] == "   • the kernel (pid 4242) was ended by SIGKILL"
    assert lines.index(" what to do") < lines.index(" stack (innermost last)") < evidence
    assert not any("--verbose" in line for line in lines)
