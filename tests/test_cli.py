"""Bad input: a one-line error, exit 2, and the user's files untouched.

Every case goes through ``refused``: exit status 2, nothing on stdout, exactly one
line on stderr starting "kernel-doctor: error:", no traceback, the notebook the same
bytes as before, and no file made or removed next to it. None of these starts a kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kernel_doctor
from conftest import make_notebook, run_cli

PREFIX = "kernel-doctor: error: "
NOBODY = 65534
NO_KERNEL = "no-such-kernel-kd"


def digest(path: Path) -> str | None:
    """The file's SHA-256, or None where there is no readable file."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def listing(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def check_refusal(code: int, out: str, err: str) -> str:
    """The checks every refusal passes; returns the message after the prefix."""
    assert "Traceback" not in err, err
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0][len(PREFIX) :]


def refused(capsys: Any, argv: list[str], notebook: Path) -> str:
    """Run the CLI in this process, expecting it to refuse ``argv`` and leave
    ``notebook`` (and the files beside it) as they were."""
    before, files = digest(notebook), listing(notebook.parent)
    capsys.readouterr()
    code, _ = run_cli(argv)
    out, err = capsys.readouterr()
    message = check_refusal(code, out, err)
    assert digest(notebook) == before
    assert listing(notebook.parent) == files
    return message


# ------------------------------------------------------------------ the notebook


def test_missing_notebook(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "nope.ipynb"
    assert refused(capsys, ["run", str(path)], path) == f"notebook {str(path)!r} does not exist"
    assert not path.exists()


@pytest.mark.parametrize("where", ["missing-directory", "under-a-file"])
def test_missing_notebook_elsewhere(tmp_path: Path, capsys: Any, where: str) -> None:
    blocker = tmp_path / "nb.ipynb"
    blocker.write_text("{}")
    path = (tmp_path / "no" / "nb.ipynb") if where == "missing-directory" else blocker / "x.ipynb"
    message = refused(capsys, ["run", str(path)], blocker)
    assert message == f"notebook {str(path)!r} does not exist"


def test_directory_as_notebook(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "dir.ipynb"
    path.mkdir()
    (path / "inside").write_text("x")
    message = refused(capsys, ["run", str(path)], path / "inside")
    assert message == f"{str(path)!r} is a directory, not a notebook"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"  \n\t\n", "is empty"),
        (b"{not json", "is not valid JSON"),
        (b'{"cells": [], "metadata": {}, "nbformat": 4', "is not valid JSON"),  # cut short
        (b"\x89PNG\r\n\x1a\n\x00\x00", "cannot read notebook"),  # not UTF-8
        (b'{"cells": [], "note": "caf\xe9"}', "cannot read notebook"),  # Latin-1
        (b'{"a": 1}', "is JSON but not a Jupyter notebook"),
        (b"[1, 2]", "is JSON but not a Jupyter notebook"),
        (b"null", "is JSON but not a Jupyter notebook"),
        (b'"cells"', "is JSON but not a Jupyter notebook"),
        (b'{"cells": [], "metadata": {}, "nbformat": 9, "nbformat_minor": 0}', "has nbformat 9"),
        (b'{"cells": [], "metadata": {}, "nbformat": 5, "nbformat_minor": 0}', "has nbformat 5"),
        (b'{"cells": [], "metadata": {}, "nbformat": 2, "nbformat_minor": 0}', "has nbformat 2"),
        (b'{"worksheets": [], "metadata": {}, "nbformat": 2}', "has nbformat 2"),
        (b'{"cells": [], "metadata": {}, "nbformat": "4"}', "has nbformat '4'"),
        (b'{"cells": [], "metadata": {}}', "has nbformat None"),
        (
            b'{"cells": [{"cell_type": "code"}], "metadata": {}, '
            b'"nbformat": 4, "nbformat_minor": 5}',
            "is not a valid notebook",
        ),
        (b'{"cells": {}, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "is not a valid"),
    ],
    ids=lambda v: v.decode("latin-1")[:24] if isinstance(v, bytes) else None,
)
def test_bad_notebook(tmp_path: Path, capsys: Any, content: bytes, message: str) -> None:
    path = tmp_path / "bad.ipynb"
    path.write_bytes(content)
    line = refused(capsys, ["run", str(path)], path)
    assert repr(str(path)) in line and message in line


def test_deeply_nested_json(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "deep.ipynb"
    path.write_text("[" * 100_000)
    assert "is nested too deeply" in refused(capsys, ["run", str(path)], path)


@pytest.mark.parametrize("how", ["metadata", "flag"])
def test_unknown_kernel(notebook: Any, capsys: Any, how: str) -> None:
    if how == "metadata":
        path = notebook(["x = 1"], kernel=NO_KERNEL)
        argv = ["run", str(path)]
    else:
        path = notebook(["x = 1"])
        argv = ["run", str(path), "--kernel", NO_KERNEL]
    line = refused(capsys, argv, path)
    assert line.startswith(f"unknown kernel {NO_KERNEL!r} (installed: ")
    assert "python3" in line and "--kernel NAME" in line


# ---------------------------------------------------------------------- options


@pytest.mark.parametrize(
    "size", ["abc", "lots", "1.5X", "10XB", "-1G", "0", "0.1", "", " ", "1e9", "1,5G"]
)
def test_bad_memory_limit(notebook: Any, capsys: Any, size: str) -> None:
    path = notebook(["x = 1"])
    line = refused(capsys, ["run", str(path), f"--memory-limit={size}"], path)
    assert "memory size" in line and repr(size) in line


def test_memory_limit_that_looks_like_an_option(notebook: Any, capsys: Any) -> None:
    path = notebook(["x = 1"])
    line = refused(capsys, ["run", str(path), "--memory-limit", "-1G"], path)
    assert "--memory-limit" in line and "--help" in line


def test_memory_limit_too_large_for_a_float(notebook: Any, capsys: Any) -> None:
    path = notebook(["x = 1"])
    line = refused(capsys, ["run", str(path), "--memory-limit", "9" * 400], path)
    assert "memory size" in line


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        ("abc", "is not a number of seconds"),
        ("soon", "is not a number of seconds"),
        ("", "is not a number of seconds"),
        ("5s", "is not a number of seconds"),
        ("-1", "must be a positive number"),
        ("-3", "must be a positive number"),
        ("0", "must be a positive number"),
        ("-0.0", "must be a positive number"),
        ("inf", "must be a positive number"),
        ("-inf", "must be a positive number"),
        ("1e400", "must be a positive number"),  # inf once read
        ("nan", "must be a positive number"),
    ],
)
def test_bad_timeout(notebook: Any, capsys: Any, timeout: str, message: str) -> None:
    path = notebook(["x = 1"])
    line = refused(capsys, ["run", str(path), f"--timeout={timeout}"], path)
    assert line.startswith("--timeout ") and message in line and repr(timeout) in line


def test_negative_timeout_as_its_own_argument(notebook: Any, capsys: Any) -> None:
    # argparse takes "-1" (a negative number) as a value, unlike "-1G" above.
    path = notebook(["x = 1"])
    line = refused(capsys, ["run", str(path), "--timeout", "-1"], path)
    assert line == "--timeout must be a positive number of seconds, not '-1'"


def test_bad_start_timeout(notebook: Any, capsys: Any) -> None:
    path = notebook(["x = 1"])
    line = refused(capsys, ["run", str(path), "--start-timeout", "soon"], path)
    assert line == "--start-timeout 'soon' is not a number of seconds"


def test_no_way_to_make_a_cgroup(
    notebook: Any, capsys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A parent cgroup that is not there, and no systemd-run on PATH.
    monkeypatch.setenv("KERNEL_DOCTOR_CGROUP_PARENT", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    path = notebook(["x = 1"])
    line = refused(capsys, ["run", str(path), "--memory-limit", "300M"], path)
    assert line.startswith("cannot make a memory cgroup for --memory-limit")
    assert "run as root" in line


def test_unknown_option_and_no_command(notebook: Any, capsys: Any) -> None:
    path = notebook(["x = 1"])
    assert "--frobnicate" in refused(capsys, ["run", str(path), "--frobnicate"], path)
    assert "notebook" in refused(capsys, ["run"], path)  # the notebook argument is required
    code, _ = run_cli([])
    assert code == 2


def test_show_unknown_report(capsys: Any) -> None:
    code, _ = run_cli(["show", "no-such-report"])
    out, err = capsys.readouterr()
    assert "kernel-doctor reports" in check_refusal(code, out, err)


# ------------------------------------------------------------- where output goes


@pytest.mark.parametrize("how", ["same", "hardlink", "symlink", "input-symlink", "relative"])
def test_output_equal_to_input_is_refused(
    notebook: Any, capsys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    path = notebook(["x = 1"])
    source, output = str(path), str(path)
    if how == "hardlink":
        output = str(tmp_path / "hardlink.ipynb")
        os.link(path, output)
    elif how == "symlink":
        output = str(tmp_path / "symlink.ipynb")
        os.symlink(path, output)
    elif how == "input-symlink":
        source = str(tmp_path / "symlink.ipynb")
        os.symlink(path, source)
    elif how == "relative":
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path / "sub")
        output = os.path.join("..", path.name)
    line = refused(capsys, ["run", source, "--output", output], path)
    assert line == f"--output {output!r} is the input notebook; add --inplace to overwrite it"
    if how == "symlink":
        assert os.readlink(output) == str(path)  # still a link to the notebook


def test_inplace_still_checks_everything_first(notebook: Any, capsys: Any) -> None:
    path = notebook(["x = 1"], kernel=NO_KERNEL)
    line = refused(capsys, ["run", str(path), "--output", str(path), "--inplace"], path)
    assert line.startswith(f"unknown kernel {NO_KERNEL!r}")


def test_report_json_equal_to_input_is_refused(notebook: Any, capsys: Any) -> None:
    path = notebook(["x = 1"])
    line = refused(
        capsys, ["run", str(path), "--report-json", str(path), "--kernel", NO_KERNEL], path
    )
    assert line.startswith(f"--report-json {str(path)!r}")


@pytest.mark.parametrize("flag", ["--output", "--report-json"])
def test_output_in_a_missing_directory(
    notebook: Any, capsys: Any, tmp_path: Path, flag: str
) -> None:
    path = notebook(["x = 1"])
    target = tmp_path / "no" / "such" / "out.json"
    assert refused(capsys, ["run", str(path), flag, str(target)], path) == (
        f"{flag} {str(target)!r}: the directory {str(target.parent)!r} does not exist"
    )
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("flag", ["--output", "--report-json"])
def test_output_under_a_file(notebook: Any, capsys: Any, flag: str) -> None:
    path = notebook(["x = 1"])
    target = path / "out.json"  # the notebook is a file, not a directory
    line = refused(capsys, ["run", str(path), flag, str(target)], path)
    assert line.startswith(f"{flag} {str(target)!r}: the directory {str(path)!r}")


@pytest.mark.parametrize("flag", ["--output", "--report-json"])
def test_output_is_a_directory(notebook: Any, capsys: Any, tmp_path: Path, flag: str) -> None:
    path = notebook(["x = 1"])
    target = tmp_path / "reports"
    target.mkdir()
    line = refused(capsys, ["run", str(path), flag, str(target)], path)
    assert line == f"{flag} {str(target)!r} is a directory; give a file name"
    assert list(target.iterdir()) == []


# -------------------------------------------------------- without read or write


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path is private to its owner)."""
    with tempfile.TemporaryDirectory(prefix="kd-cli-") as directory:
        os.chmod(directory, 0o755)
        yield Path(directory)


Access = tuple[str, int, bool]  # (path, os.access mode, the answer a test needs)


# Runs in a fresh process: imports everything while it may still read site-packages
# (uid 65534 cannot enter /root, where this Python may live), then drops to 65534.
UNPRIVILEGED = """
import json, os, sys
import nbformat
from kernel_doctor.commands import main, run
import jupyter_client.kernelspec, rich.console, kernel_doctor.batch  # noqa
argv, need, drop = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3] == "1"
nbformat.validator.get_validator(version=4, version_minor=5)
if drop:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
if any(os.access(path, mode) != wanted for path, mode, wanted in need):
    sys.exit(77)
sys.exit(main(argv))
"""


def run_unprivileged(argv: list[str], need: list[Access]) -> tuple[int, str, str]:
    """``main(argv)`` in a fresh process, as uid/gid 65534 when we are root (who reads
    and writes any file), else as ourselves. A child whose os.access answers differ
    from ``need`` exits 77, a skip. Returns (exit status, stdout, stderr)."""
    drop = os.geteuid() == 0
    src = str(Path(kernel_doctor.__file__).parent.parent)
    proc = subprocess.run(
        [sys.executable, "-c", UNPRIVILEGED, json.dumps(argv), json.dumps(need), str(int(drop))],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": src},
        check=False,
    )
    if proc.returncode == 77:
        who = f"uid {NOBODY}" if drop else "this user"
        pytest.skip(f"{who} has other access than the test needs to {need}")
    return proc.returncode, proc.stdout, proc.stderr


def test_unreadable_notebook(open_dir: Path) -> None:
    path = make_notebook(open_dir, ["x = 1"])
    # Private to root where we are root (the child runs as nobody); else no access.
    os.chmod(path, 0o600 if os.geteuid() == 0 else 0)
    before, files = digest(path), listing(open_dir)
    need = [(str(open_dir), os.X_OK, True), (str(path), os.R_OK, False)]
    code, out, err = run_unprivileged(["run", str(path)], need)
    message = check_refusal(code, out, err)
    assert message.startswith(f"cannot read notebook {str(path)!r}: ")
    assert "Permission denied" in message
    os.chmod(path, 0o644)
    assert digest(path) == before
    assert listing(open_dir) == files


@pytest.mark.parametrize("flag", ["--output", "--report-json"])
def test_output_in_an_unwritable_directory(open_dir: Path, flag: str) -> None:
    path = make_notebook(open_dir, ["x = 1"])
    os.chmod(path, 0o644)
    locked = open_dir / "locked"
    locked.mkdir(mode=0o555)
    os.chmod(locked, 0o555)  # whatever the umask
    target = locked / "out.ipynb"
    before = digest(path)
    need = [(str(path), os.R_OK, True), (str(locked), os.X_OK, True)]
    need.append((str(locked), os.W_OK, False))
    code, out, err = run_unprivileged(["run", str(path), flag, str(target)], need)
    message = check_refusal(code, out, err)
    assert message == f"{flag} {str(target)!r}: the directory {str(locked)!r} is not writable"
    assert digest(path) == before
    assert list(locked.iterdir()) == []


# ------------------------------------------------------------- the real command


@pytest.mark.parametrize(
    "extra", [["--timeout", "nan"], ["--memory-limit", "10XB"]], ids=["timeout", "size"]
)
def test_console_command_refuses_with_one_line(notebook: Any, extra: list[str]) -> None:
    # `python -m kernel_doctor` as a user runs it: the exit status through sys.exit.
    path = notebook(["x = 1"])
    before = digest(path)
    src = str(Path(kernel_doctor.__file__).parent.parent)
    paths = [src, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run(
        [sys.executable, "-m", "kernel_doctor", "run", str(path), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    check_refusal(proc.returncode, proc.stdout, proc.stderr)
    assert digest(path) == before


@pytest.mark.parametrize("value", ["0%", "150%", "abc%", "lots", "1.5X"])
def test_bad_guard_threshold(notebook: Any, capsys: Any, value: str) -> None:
    path = notebook(["x = 1"])
    line = refused(capsys, ["run", str(path), "--guard", value], path)
    assert value in line


def test_guard_and_no_guard_together(notebook: Any, capsys: Any) -> None:
    path = notebook(["x = 1"])
    line = refused(capsys, ["run", str(path), "--guard", "80%", "--no-guard"], path)
    assert "not allowed with argument" in line
