"""One reader of guard settings (agent.settings) for `run --guard`, KERNEL_DOCTOR_GUARD
and `%doctor guard`: the same text means the same everywhere, a bad one gets the same
message (issue 12, item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import make_notebook, run_cli
from kernel_doctor.agent.settings import guard_bytes, guard_setting
from kernel_doctor.supervisor.guard import threshold
from test_agent import shell  # noqa: F401  # a fixture

GiB = 1024**3
BAD = ["150%", "0%", "-5%", "9zz", "abc%", "lots"]


def message(text: str) -> str:
    return (
        f"cannot read {text!r} as a memory guard setting: give a share of the limit "
        "above 0 and up to 100% (90%), a size (3G), or off"
    )


@pytest.mark.parametrize(
    ("text", "setting", "at"),
    [
        ("90%", "90%", int(0.9 * GiB)),
        (" 85% ", "85%", int(0.85 * GiB)),
        ("100%", "100%", GiB),
        ("on", "90%", int(0.9 * GiB)),
        ("OFF", "off", None),
        ("0", "off", None),
        ("512m", "512M", 512 * 1024**2),
        ("3G", "3G", GiB),  # never above the limit
    ],
)
def test_one_reading_of_each_setting(text: str, setting: str, at: int | None) -> None:
    assert guard_setting(text) == setting
    assert guard_bytes(setting, GiB) == at
    found = threshold(text, GiB)  # what the supervisor applies
    assert (found[0] if found else None) == at


@pytest.mark.parametrize("text", BAD)
def test_a_bad_setting_has_one_message(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        guard_setting(text)
    assert str(refused.value) == message(text)
    assert threshold(text, GiB) == (int(0.9 * GiB), "90%")  # the guard never vanishes


@pytest.mark.parametrize("text", BAD)
def test_run_refuses_a_bad_guard(tmp_path: Path, capsys: Any, text: str) -> None:
    notebook = make_notebook(tmp_path, ["x = 1"])
    code, _ = run_cli(["run", str(notebook), f"--guard={text}"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"kernel-doctor: error: --guard: {message(text)}"


@pytest.mark.usefixtures("shell")  # an IPython shell with the agent loaded
def test_doctor_guard_reads_as_run_does(capsys: Any) -> None:
    from kernel_doctor.agent import running_agent
    from kernel_doctor.agent.magics import guard

    agent = running_agent()
    assert agent is not None
    for text in BAD:
        guard([text])
        assert capsys.readouterr().out.strip() == f"%doctor guard: {message(text)}"
        assert agent.guard_setting is None  # nothing changed
    guard(["85", "%"])  # as IPython splits "85 %"
    assert agent.guard_setting == "85%"
    guard(["on"])
    assert agent.guard_setting == "90%"


def test_a_bad_environment_setting_is_said_and_the_default_kept(tmp_path: Path) -> None:
    notebook = make_notebook(tmp_path, ["x = 1"])
    done = subprocess.run(
        [sys.executable, "-m", "kernel_doctor", "run", str(notebook)],
        env={**os.environ, "KERNEL_DOCTOR_GUARD": "9zz", "JUPYTER_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"kernel-doctor: warning: {message('9zz')}; using 90%" in done.stderr.splitlines()
