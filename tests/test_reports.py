"""Stored reports: pruning, the previous-death notice, and the history listing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from kernel_doctor.reports.notice import find_previous, leave_notice, notice_text
from kernel_doctor.reports.store import prune, reports_dir


def write_report(directory: Path, stamp: str, pid: int, **kernel: Any) -> Path:
    doc = {
        "id": f"{stamp}-{pid}",
        "cause": "out_of_memory",
        "summary": "Out of memory in cell [3], line 2: the kernel grew to 300 MiB of the "
        "300 MiB limit.",
        "cell": {"index": None, "execution_count": 3, "id": None, "source": "x"},
        "line": 2,
        "memory": {
            "peak_bytes": 300 * 1024**2,
            "limit_bytes": 300 * 1024**2,
            "limit_source": "cgroup v1 memory limit of /sys/fs/cgroup/memory/kd",
        },
        "advice": ["Process the data in chunks."],
        "kernel": {"pid": pid, "ended": time.time(), **kernel},
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{doc['id']}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    return Path(reports_dir())


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


def test_previous_death_is_found_for_the_same_connection_file_once(reports: Path) -> None:
    write_report(reports, "20261125-120000", 4242, connection_file="/rt/kernel-abc.json")
    write_report(reports, "20261125-120001", 4343, connection_file="/rt/kernel-other.json")
    meta = {"connection_file": "/rt/kernel-abc.json", "kernel_pid": 5000}
    found = find_previous(meta)
    assert found is not None and found["id"] == "20261125-120000-4242"
    assert find_previous(meta) is None  # claimed: never shown twice


def test_previous_death_by_session_name(reports: Path) -> None:
    write_report(reports, "20261125-120000", 4242, session_name="/home/u/a.ipynb")
    assert find_previous({"connection_file": "/rt/new.json", "session_name": "/x.ipynb"}) is None
    found = find_previous({"connection_file": "/rt/new.json", "session_name": "/home/u/a.ipynb"})
    assert found is not None and found["id"] == "20261125-120000-4242"


def test_no_notice_without_a_way_to_tell_or_for_old_deaths(reports: Path) -> None:
    path = write_report(reports, "20261125-120000", 4242, connection_file="/rt/k.json")
    assert find_previous({}) is None  # nothing to match by: when unsure, don't show
    old = time.time() - 3600
    os.utime(path, (old, old))
    assert find_previous({"connection_file": "/rt/k.json"}) is None


def test_notice_is_left_in_the_session(reports: Path, tmp_path: Path) -> None:
    write_report(reports, "20261125-120000", 4242, connection_file="/rt/k.json")
    session = tmp_path / "session"
    session.mkdir()
    assert leave_notice(str(session), {"connection_file": "/rt/k.json"})
    notice = json.loads((session / "notice.json").read_text())
    assert notice["id"] == "20261125-120000-4242"
    text = notice["text"]
    assert text.splitlines()[0].startswith("kernel-doctor: the previous kernel of this notebook")
    assert "Out of memory in cell [3], line 2" in text
    assert "Memory: peak 300 MiB of 300 MiB (cgroup v1 memory limit" in text
    assert "Advice: Process the data in chunks." in text
    assert "%doctor deaths" in text and "kernel-doctor show 20261125-120000-4242" in text


def test_notice_text_without_memory_or_advice() -> None:
    text = notice_text({"id": "x", "summary": "The kernel exited by itself with code 3."})
    assert "Memory:" not in text and "Advice:" not in text
    assert "The kernel exited by itself with code 3." in text
