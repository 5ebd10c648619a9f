"""Bad input: a one-line error, exit 2, and the user's files untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_line(capsys: Any) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_notebook(tmp_path: Path, capsys: Any) -> None:
    code, _ = run_cli(["run", str(tmp_path / "nope.ipynb")])
    assert code == 2
    assert error_line(capsys) == (
        f"kernel-doctor: error: notebook {str(tmp_path / 'nope.ipynb')!r} does not exist"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("{not json", "is not valid JSON"),
        ('{"a": 1}', "is JSON but not a Jupyter notebook"),
        ('{"cells": [], "metadata": {}, "nbformat": 9, "nbformat_minor": 0}', "has nbformat 9"),
        (
            '{"cells": [{"cell_type": "code"}], "metadata": {}, '
            '"nbformat": 4, "nbformat_minor": 5}',
            "is not a valid notebook",
        ),
    ],
)
def test_bad_notebook(tmp_path: Path, capsys: Any, content: str, message: str) -> None:
    path = tmp_path / "bad.ipynb"
    path.write_text(content)
    before = digest(path)
    code, _ = run_cli(["run", str(path)])
    assert code == 2
    assert message in error_line(capsys)
    assert digest(path) == before


def test_unknown_kernel(notebook: Any, capsys: Any) -> None:
    path = notebook(["x = 1"], kernel="no-such-kernel-kd")
    code, _ = run_cli(["run", str(path)])
    assert code == 2
    line = error_line(capsys)
    assert "unknown kernel 'no-such-kernel-kd'" in line
    assert "python3" in line and "--kernel NAME" in line


@pytest.mark.parametrize("size", ["lots", "1.5X", "-1G", "0", ""])
def test_bad_memory_limit(notebook: Any, capsys: Any, size: str) -> None:
    code, _ = run_cli(["run", str(notebook(["x = 1"])), f"--memory-limit={size}"])
    assert code == 2
    assert "memory size" in error_line(capsys)


@pytest.mark.parametrize("timeout", ["soon", "-3", "0", "inf", "nan"])
def test_bad_timeout(notebook: Any, capsys: Any, timeout: str) -> None:
    code, _ = run_cli(["run", str(notebook(["x = 1"])), f"--timeout={timeout}"])
    assert code == 2
    assert "--timeout" in error_line(capsys)


def test_output_equal_to_input_is_refused(notebook: Any, capsys: Any) -> None:
    path = notebook(["x = 1"])
    before = digest(path)
    code, _ = run_cli(["run", str(path), "--output", str(path)])
    assert code == 2
    assert error_line(capsys) == (
        f"kernel-doctor: error: --output {str(path)!r} is the input notebook; "
        "add --inplace to overwrite it"
    )
    assert digest(path) == before


def test_no_way_to_make_a_cgroup(
    notebook: Any, capsys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A parent cgroup that is not there, and no systemd-run on PATH.
    monkeypatch.setenv("KERNEL_DOCTOR_CGROUP_PARENT", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path))
    code, _ = run_cli(["run", str(notebook(["x = 1"])), "--memory-limit", "300M"])
    assert code == 2
    line = error_line(capsys)
    assert line.startswith("kernel-doctor: error: cannot make a memory cgroup for --memory-limit")
    assert "run as root" in line


def test_unknown_option_and_no_command(capsys: Any) -> None:
    code, _ = run_cli(["run", "--frobnicate"])
    assert code == 2
    assert "kernel-doctor: error:" in error_line(capsys)
    code, _ = run_cli([])
    assert code == 2


def test_show_unknown_report(capsys: Any) -> None:
    code, _ = run_cli(["show", "no-such-report"])
    assert code == 2
    assert "kernel-doctor reports" in error_line(capsys)


@pytest.mark.parametrize("flag", ["--output", "--report-json"])
def test_output_in_a_missing_directory(
    notebook: Any, capsys: Any, tmp_path: Path, flag: str
) -> None:
    target = tmp_path / "no" / "such" / "out.json"
    code, _ = run_cli(["run", str(notebook(["x = 1"])), flag, str(target)])
    assert code == 2
    assert error_line(capsys) == (
        f"kernel-doctor: error: {flag} {str(target)!r}: the directory "
        f"{str(target.parent)!r} does not exist"
    )
