"""A worker of the kernel dies, not the kernel: real pools, real subprocesses, a real
memory cgroup (300 MB) whose OOM killer takes the worker, a real segfault.

What the user must see: the cell says at once which worker died of what and how
memory stood; a ``Pool.map`` that would wait forever for the dead worker's task ends
with ``KernelDoctorWorkerDied``; the kernel keeps its variables; workers that end as
workers end (recycling, a closing pool) are never reported."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from kernels import execute, kernel_in_cgroup

MiB = 1024**2

# A worker that grows 20 MiB every 10 ms until the OOM killer takes it (300 MB limit).
GROWER = """
import os, time, multiprocessing
def grow(i):
    if i != 2:
        time.sleep(0.5)
        return i
    chunks = []
    while True:
        chunks.append(b"\\x01" * (20 * 1024**2))
        time.sleep(0.01)
"""


@pytest.fixture
def kc(tmp_path: Path, cgroup_parent: str) -> Iterator[Any]:
    with kernel_in_cgroup(tmp_path / "kernels", 300 * MiB) as client:
        # The memory guard would stop the waiting cell as the worker fills the cgroup:
        # here the worker's own death is what is tested.
        reply, _ = execute(client, f"%doctor guard off\nkept = 'still here'\n{GROWER}")
        assert reply["status"] == "ok", reply
        yield client


def stderr_of(messages: list[dict[str, Any]]) -> str:
    return "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
    )


def error_of(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    return errors[0] if errors else None


def failed_with(kc: Any, code: str, ename: str) -> tuple[dict[str, Any], str]:
    """Run ``code``, which must end with ``ename``: (its error, the cell's stderr)."""
    _, messages = execute(kc, code)
    error = error_of(messages)
    assert error is not None and error["ename"] == ename, messages
    return error, stderr_of(messages)


def assert_kernel_kept_its_variables(kc: Any) -> None:
    reply, messages = execute(kc, "print(kept)")
    assert reply["status"] == "ok", reply
    assert "still here" in "".join(
        m["content"].get("text", "") for m in messages if m["msg_type"] == "stream"
    )


def test_a_pool_whose_worker_is_oom_killed_stops_waiting(kc: Any) -> None:
    started = time.monotonic()
    code = "with multiprocessing.Pool(4) as pool:\n    pool.map(grow, range(4))"
    error, text = failed_with(kc, code, "KernelDoctorWorkerDied")
    took = time.monotonic() - started
    assert "killed by the OOM killer" in error["evalue"], error
    # The traceback ends in the user's call, not in the pool's and threading's waits.
    shown = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))
    assert "pool.map(grow, range(4))" in shown and "threading.py" not in shown, shown
    assert "(a multiprocessing Pool worker) was killed by the OOM killer" in text, text
    assert "its 4 workers had reached the 300 MiB memory limit (the worker held" in text, text
    assert "→ Use fewer workers" in text, text
    assert took < 20, took  # today: forever
    assert_kernel_kept_its_variables(kc)


def test_a_broken_process_pool_says_why(kc: Any) -> None:
    code = (
        "from concurrent.futures import ProcessPoolExecutor\n"
        "with ProcessPoolExecutor(4) as ex:\n    list(ex.map(grow, range(4)))"
    )
    _, text = failed_with(kc, code, "BrokenProcessPool")
    assert "was killed by the OOM killer" in text, text
    assert_kernel_kept_its_variables(kc)


def test_a_worker_segfault_is_a_native_crash_of_that_worker(kc: Any) -> None:
    code = (
        "import ctypes\n"
        "def crash(i):\n    if i == 1:\n        ctypes.string_at(0)\n    time.sleep(0.3)\n"
        "    return i\n"
        "with multiprocessing.Pool(2) as pool:\n    pool.map(crash, range(4))"
    )
    _, text = failed_with(kc, code, "KernelDoctorWorkerDied")
    # The worker died before any look listed it: its pid may be unknown, never its role.
    assert re.search(r"(a|\() ?multiprocessing Pool worker\)? crashed with SIGSEGV", text), text
    assert_kernel_kept_its_variables(kc)


def test_a_subprocess_killed_by_the_oom_killer_is_named(kc: Any) -> None:
    code = (
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', 'import time\\na = []\\nwhile True:\\n"
        '    a.append(b"x" * 10**7); time.sleep(0.01)\'], check=True)'
    )
    _, text = failed_with(kc, code, "CalledProcessError")
    # Named from the frames the cell waits in, or from the program's name.
    assert re.search(r"\(a subprocess of this cell(: python[\d.]*)?\) was killed by the OOM", text)


def test_workers_that_end_as_workers_end_are_never_reported(kc: Any) -> None:
    code = (
        "def square(i):\n    return i * i\n"
        "with multiprocessing.Pool(4, maxtasksperchild=1) as pool:\n"
        "    total = sum(pool.map(square, range(200), chunksize=1))\n"
        "import subprocess\nsubprocess.run(['true'])\nprint(total)"
    )
    reply, messages = execute(kc, code)
    assert reply["status"] == "ok", reply
    assert stderr_of(messages) == ""
    time.sleep(1.5)  # a late note would show in the next cell
    reply, messages = execute(kc, "print(kept)")
    assert stderr_of(messages) == "", messages


def test_run_reports_a_worker_killed_by_the_oom_killer(
    notebook: Any, tmp_path: Path, cgroup_parent: str
) -> None:
    path = notebook(
        [
            GROWER,
            "with multiprocessing.Pool(4) as pool:\n    pool.map(grow, range(4))",
            "print('not reached')",
        ]
    )
    out = tmp_path / "out.ipynb"
    args = [str(path), "--memory-limit", "300M", "--no-guard", "-o", str(out)]
    code, report = run_cli(["run", *args], tmp_path / "report.json")
    assert code == 1, report
    assert report is not None
    assert report["outcome"] == "child_died", report["summary"]
    assert report["cause"] == "out_of_memory"
    assert report["summary"].startswith("In [2]: worker process "), report["summary"]
    assert "was killed by the OOM killer" in report["summary"], report["summary"]
    assert report["advice"][0].startswith("Use fewer workers"), report["advice"]
    [child] = report["children"]
    assert child["cause"] == "out_of_memory" and child["signal"] == "SIGKILL", child
    assert child["rss_bytes"] > 100 * MiB, child
    import nbformat

    cells = nbformat.read(str(out), as_version=4).cells
    assert [o["ename"] for o in cells[1].outputs if o["output_type"] == "error"] == [
        "KernelDoctorWorkerDied"
    ]


def test_a_workers_death_is_stored_shown_and_listed(kc: Any) -> None:
    code = "with multiprocessing.Pool(4) as pool:\n    pool.map(grow, range(4))"
    _, messages = execute(kc, code)
    pid = int(re.search(r"worker process (\d+)", stderr_of(messages))[1])  # type: ignore[index]
    directory = Path(os.environ["JUPYTER_DATA_DIR"], "kernel-doctor", "reports")
    deadline = time.monotonic() + 5
    stored: dict[str, Any] = {}
    while time.monotonic() < deadline:  # stored again once the agent named the role
        for path in directory.glob(f"*-{pid}.json"):
            stored = json.loads(path.read_text())
        children = stored.get("children") or [{}]
        if children[0].get("role") == "a multiprocessing Pool worker":
            break
        time.sleep(0.1)
    assert stored["outcome"] == "child_died", stored
    assert stored["cause"] == "out_of_memory" and stored["kernel"]["ended"] is None, stored
    assert stored["summary"].startswith(f"In [2]: worker process {pid} "), stored["summary"]
    assert stored["children"][0]["role"] == "a multiprocessing Pool worker", stored
    assert stored["cell"]["source"] == code, stored["cell"]
    _, messages = execute(kc, "%doctor deaths")
    listing = "".join(
        m["content"]["data"]["text/plain"] for m in messages if m["msg_type"] == "display_data"
    )
    assert f"{stored['id']}  " in listing and "worker out_of_memory: In [2]" in listing, listing


def test_a_dataloader_worker_killed_by_the_oom_killer_is_named(
    tmp_path: Path, cgroup_parent: str
) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed here")
    dataset = (
        "import time, torch\nfrom torch.utils.data import DataLoader, Dataset\n"
        "class Grows(Dataset):\n"
        "    def __len__(self):\n        return 8\n"
        "    def __getitem__(self, i):\n"
        "        if i != 3:\n            return torch.zeros(4)\n"
        "        chunks = []\n"
        "        while True:\n"
        "            chunks.append(b'\\x01' * (20 * 1024**2))\n            time.sleep(0.01)\n"
    )
    # torch alone takes ~220 MiB in the kernel (its workers share it, forked).
    with kernel_in_cgroup(tmp_path / "kernels", 600 * MiB) as client:
        reply, _ = execute(client, f"%doctor guard off\nkept = 'still here'\n{dataset}")
        assert reply["status"] == "ok", reply
        code = "for batch in DataLoader(Grows(), batch_size=1, num_workers=2):\n    pass"
        _, messages = execute(client, code)
        error = error_of(messages)
        assert error is not None and "DataLoader worker" in error["evalue"], messages
        text = stderr_of(messages)
        assert "(a DataLoader worker) was killed by the OOM killer" in text, text
        assert_kernel_kept_its_variables(client)
