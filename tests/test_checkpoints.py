"""Checkpoints of a notebook's variables, restored in the next kernel after deaths that
nobody could prevent: real supervised kernels in real memory cgroups, really killed."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernels import SLOWDOWN, execute, expression, kernel_in_cgroup, unguardable_fill

MiB = 1024**2
LIMIT = 400 * MiB
HAS_PANDAS = importlib.util.find_spec("pandas") is not None

SETUP = [
    "import hashlib, os, pickle\nimport numpy as np",
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y",
    "arr = np.arange(2_000_000, dtype=np.float64) * 1.5\n"
    "d = {'a': [1, 2, {'b': (3, 4.5)}], 'é': None}\n"
    "items = list(range(1000)) + ['x']\n"
    "pt = Point(1, [2, 3])\n"
    "gen = (i for i in range(3))",
]
FRAME = (
    "import pandas as pd\n"
    "frame = pd.DataFrame({'n': np.arange(50_000), 's': [f'r{i}' for i in range(50_000)]})"
)
SAVED = ["arr", "d", "items", "pt"] + (["frame"] if HAS_PANDAS else [])
DIGESTS = "{n: hashlib.sha256(pickle.dumps(globals()[n], protocol=5)).hexdigest() for n in %r}"


@pytest.fixture
def notebook_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both kernels of a test belong to one notebook, as jupyter_server tells them."""
    name = str(tmp_path / "analysis.ipynb")
    monkeypatch.setenv("JPY_SESSION_NAME", name)
    return name


def run(kc: Any, code: str) -> tuple[dict[str, Any], str]:
    reply, messages = execute(kc, code)
    text = ""
    for msg in messages:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            text += content["text"]
        elif msg["msg_type"] in ("display_data", "execute_result"):
            text += content["data"].get("text/plain", "")
    return reply, text


def notebook_folder() -> Path:
    """This test's notebook's checkpoints (other tests' notebooks have their own)."""
    from kernel_doctor.agent.store import notebook_key

    key = notebook_key(os.environ["JPY_SESSION_NAME"])
    return Path(os.environ["JUPYTER_DATA_DIR"]) / "kernel-doctor" / "checkpoints" / str(key)


def generations(count: int | None = None) -> list[dict[str, Any]]:
    found = []
    for manifest in notebook_folder().glob("*/g-*/manifest.json"):
        data = json.loads(manifest.read_text())
        data["path"] = str(manifest.parent)
        if count is None or data["execution_count"] == count:
            found.append(data)
    return found


def wait_checkpoint(count: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout * SLOWDOWN
    while time.monotonic() < deadline:
        found = generations(count)
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after In [{count}]: {generations()}")


def kernel_pid(kc: Any) -> int:
    reply, _ = execute(kc, "pass", pid="os.getpid()")
    return int(expression(reply, "pid"))


def fill_notebook(kc: Any) -> tuple[int, str]:
    """The setup cells: (the last execution count, the saved values' pickle digests)."""
    reply: dict[str, Any] = {}
    for cell in SETUP + ([FRAME] if HAS_PANDAS else []):
        reply, text = run(kc, cell)
        assert reply["status"] == "ok", (cell, text)
    digests, _ = execute(kc, "pass", digests=DIGESTS % SAVED)  # a cell too
    return int(digests["execution_count"]), expression(digests, "digests")


def assert_restored(kc: Any, digests: str, after: int) -> None:
    reply, notice = run(kc, "1 + 1")
    variables = len(SAVED)
    assert f"Restore {variables} variables saved after In [{after}]" in notice, notice
    assert "Run %doctor restore" in notice and "Its variables are gone" not in notice
    reply, text = run(kc, "%doctor restore")
    assert reply["status"] == "ok"
    assert f"Restored {variables} variables saved after In [{after}]" in text, text
    assert "gen (generator): cannot be pickled" in text and "made by In [3]" in text
    again, _ = execute(kc, "pass", digests=DIGESTS % SAVED, kind="type(pt).__name__")
    assert expression(again, "digests") == digests  # equal to what was saved
    assert expression(again, "kind") == "'Point'"  # the notebook's own class, defined again
    reply, text = run(kc, "%doctor restore --recompute gen\nprint(list(gen))")
    assert "[0, 1, 2]" in text, text


@pytest.fixture
def two_kernels(tmp_path: Path, notebook_name: str) -> Iterator[Any]:
    def kernel(name: str, limit: int = LIMIT) -> Any:
        return kernel_in_cgroup(tmp_path / name, limit)

    yield kernel


def test_variables_come_back_after_a_sigkill(two_kernels: Any) -> None:
    with two_kernels("first") as kc:
        count, digests = fill_notebook(kc)
        manifest = wait_checkpoint(count)
        assert sorted(manifest["variables"]) == sorted(SAVED)
        assert manifest["unsaved"]["gen"]["type"] == "generator"
        pid = kernel_pid(kc)
        os.kill(pid, signal.SIGKILL)  # from outside: nobody could prevent it
        wait_report(pid)
    with two_kernels("second") as kc:
        assert_restored(kc, digests, count)


def test_variables_come_back_after_an_oom_kill(two_kernels: Any) -> None:
    with two_kernels("first") as kc:
        count, digests = fill_notebook(kc)
        wait_checkpoint(count)
        pid = kernel_pid(kc)
        # Shared memory filled in one C call: an OOM kill no guard can turn into an error.
        kc.execute(unguardable_fill(2 * LIMIT // MiB))
        wait_report(pid)
    with two_kernels("second") as kc:
        _, notice = run(kc, "pass")
        assert "Out of memory" in notice, notice
        _, text = run(kc, "%doctor restore")
        assert f"Restored {len(SAVED)} variables saved after In [{count}]" in text, text
        again, _ = execute(kc, "pass", digests=DIGESTS % SAVED)
        assert expression(again, "digests") == digests


def test_a_death_while_a_checkpoint_is_written_leaves_the_previous_one(
    two_kernels: Any,
) -> None:
    with two_kernels("first") as kc:
        count, digests = fill_notebook(kc)
        wait_checkpoint(count)
        pid = kernel_pid(kc)
        for attempt in range(5):  # catch a generation half written, then kill
            kc.execute(f"big{attempt} = np.ones(150 * 2**20 // 8) * {attempt}")
            if killed_mid_write(pid):
                wait_report(pid)
                break
        else:
            pytest.fail("no checkpoint was caught half written in 5 tries")
    with two_kernels("second") as kc:
        _, text = run(kc, "%doctor restore")
        # The last whole generation: everything before the big arrays, or with some of
        # them if an earlier try's generation completed; never a half-written one.
        assert "Restored" in text and "Could not be restored" not in text, text
        again, _ = execute(kc, "pass", digests=DIGESTS % SAVED)
        assert expression(again, "digests") == digests


def wait_report(pid: int, timeout: float = 20.0) -> None:
    """Until the supervisor has stored the death's report (before the test's kernel
    manager ends it)."""
    reports = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernel-doctor" / "reports"
    deadline = time.monotonic() + timeout * SLOWDOWN
    while time.monotonic() < deadline:
        if any(p.name.endswith(f"-{pid}.json") for p in reports.glob("*.json")):
            return
        time.sleep(0.05)
    raise AssertionError(f"no report of kernel {pid}'s death in {reports}")


def killed_mid_write(pid: int, timeout: float = 10.0) -> bool:
    """SIGKILL the kernel once a generation is being written; False if it finished."""
    done_before = {g["path"] for g in generations()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for temporary in notebook_folder().glob("*/.tmp-*"):
            if any(p.name.endswith(".b0") for p in temporary.iterdir()):
                os.kill(pid, signal.SIGKILL)
                return True
        if {g["path"] for g in generations()} - done_before:
            return False
        time.sleep(0.002)
    return False


def test_the_size_cap_holds_and_says_what_it_left_out(
    tmp_path: Path, notebook_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERNEL_DOCTOR_CHECKPOINT", "4M")
    with kernel_in_cgroup(tmp_path / "k", LIMIT) as kc:
        run(kc, "import numpy as np\nsmall = list(range(100))")
        reply, _ = run(kc, "huge = np.ones(1_000_000)  # 8 MB, twice the cap")
        manifest = wait_checkpoint(int(reply["execution_count"]))
        assert "small" in manifest["variables"]
        assert manifest["unsaved"]["huge"]["why"] == "over the checkpoints' size cap"
        held = sum(
            p.stat().st_size for p in Path(manifest["path"]).parent.rglob("*") if p.is_file()
        )
        assert held <= 4 * MiB
        _, text = run(kc, "%doctor checkpoint")
        assert "not saved: huge (numpy.ndarray): over the checkpoints' size cap" in text, text


def test_only_what_changed_is_written_again(tmp_path: Path, notebook_name: str) -> None:
    with kernel_in_cgroup(tmp_path / "k", LIMIT) as kc:
        run(kc, "import numpy as np\nkept = np.zeros(100_000)\ngrown = [1]")
        first = wait_checkpoint(1)
        files = {n: Path(first["path"], v["files"][-1]) for n, v in first["variables"].items()}
        inodes = {n: p.stat().st_ino for n, p in files.items()}
        reply, _ = run(kc, "grown.append(2)  # in place, named")
        second = wait_checkpoint(int(reply["execution_count"]))
        now = {n: Path(second["path"], v["files"][-1]).stat().st_ino
               for n, v in second["variables"].items()}  # fmt: skip
        assert now["kept"] == inodes["kept"]  # not named, same object: a hard link
        assert now["grown"] != inodes["grown"]  # named by the cell: pickled again
        deadline = time.monotonic() + 10  # pruned right after the newer one is whole
        while Path(first["path"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(first["path"]).exists()  # the older generation is gone


def test_run_resume_finishes_a_notebook_whose_kernel_was_killed_halfway(
    notebook: Any, tmp_path: Path, capsys: Any
) -> None:
    from conftest import run_cli

    marker = tmp_path / "killed-once"
    path = notebook(
        [
            "import os, signal, pathlib, time\nimport numpy as np",
            "a = np.arange(10)\nsteps = ['one']",
            "time.sleep(1.5)  # a long cell: the state before it is checkpointed meanwhile",
            "steps.append('two')",
            f"if not pathlib.Path({str(marker)!r}).exists():\n"
            f"    pathlib.Path({str(marker)!r}).touch()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)",
            "print(steps, a.sum())",
        ]
    )
    code, report = run_cli(["run", str(path), "--checkpoint"], tmp_path / "first.json")
    assert code == 3 and report is not None and report["cause"] == "killed", report
    capsys.readouterr()
    out = tmp_path / "resumed.ipynb"
    code, report = run_cli(["run", str(path), "--resume", "-o", str(out)], tmp_path / "again.json")
    err = capsys.readouterr().err
    assert code == 0, (report, err)
    assert "--resume: Restored 2 variables saved after In [2]" in err, err
    assert "--resume: skipping the first 2 code cells, run before the death" in err, err
    import nbformat

    cells = nbformat.read(str(out), as_version=4).cells
    assert not cells[0].outputs and not cells[1].outputs  # skipped
    printed = "".join(o.get("text", "") for o in cells[5].outputs)
    assert printed == "['one', 'two'] 45\n"  # a and steps came back, the rest ran again


def test_settings_read_as_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    from kernel_doctor.agent.checkpoint import checkpoint_setting
    from kernel_doctor.resume import notebook_env

    assert checkpoint_setting(None) == (0, False)  # on, in a person's pauses
    assert checkpoint_setting("OFF") is None
    assert checkpoint_setting("always") == (0, True)
    assert checkpoint_setting("20G") == (20 * 1024**3, False)
    with pytest.raises(ValueError, match="cannot read 'lots' as a memory size"):
        checkpoint_setting("lots")
    # kernel-doctor run: off unless --checkpoint (or --resume), or the user's own setting
    monkeypatch.delenv("KERNEL_DOCTOR_CHECKPOINT", raising=False)
    assert notebook_env("nb.ipynb", False)["KERNEL_DOCTOR_CHECKPOINT"] == "off"
    assert notebook_env("nb.ipynb", True)["KERNEL_DOCTOR_CHECKPOINT"] == "always"
    monkeypatch.setenv("KERNEL_DOCTOR_CHECKPOINT", "5G")
    assert notebook_env("nb.ipynb", False)["KERNEL_DOCTOR_CHECKPOINT"] == "5G"
    assert notebook_env("nb.ipynb", False)["KERNEL_DOCTOR_NOTEBOOK"] == os.path.abspath("nb.ipynb")
