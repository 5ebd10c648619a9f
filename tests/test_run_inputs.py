"""``kernel-doctor run`` refuses, before any kernel starts, the inputs it could not
live with (issue 11, items 7-9): a --memory-limit below what a kernel needs to
start, an --output or --report-json that could not be written after the run, and a
"notebook" that is a FIFO, a device or far too large to be one.

Each refusal is exit 2, one line on stderr, nothing on stdout, no traceback, and
nothing of the user's made, removed or overwritten. Only the last test starts a
kernel, and only where a memory cgroup can be made.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import make_notebook, run_cli
from kernel_doctor.commands.run import MAX_NOTEBOOK_SIZE
from test_cli import check_refusal, run_unprivileged

NO_KERNEL = "no-such-kernel-kd"
MiB = 1024**2


def digest(path: Path) -> str | None:
    """A regular file's SHA-256; None for anything else (a FIFO is never opened)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def refused(capsys: Any, argv: list[str], keep: Path) -> str:
    """``main(argv)`` in this process, expected to refuse, leaving the folder of
    ``keep`` (a file of the user's: the notebook) with the same names and ``keep``
    with the same bytes. Returns the message."""
    folder = keep.parent
    before, names = digest(keep), sorted(os.listdir(folder))
    capsys.readouterr()
    code, _ = run_cli(argv)
    message = check_refusal(code, *capsys.readouterr())
    assert digest(keep) == before
    assert sorted(os.listdir(folder)) == names
    return message


def unknown_kernel(capsys: Any, argv: list[str], keep: Path) -> None:
    """``argv`` (which names --kernel NO_KERNEL) passed every check before the
    kernel's: the kernel lookup is what refuses it."""
    assert refused(capsys, argv, keep).startswith(f"unknown kernel {NO_KERNEL!r}")


# -------------------------------------------------- item 7: --memory-limit too small


@pytest.mark.parametrize("size", ["1.5", "1", "10KB", "1M", "48M", "63M", "63.9M", "65535K"])
def test_memory_limit_below_the_minimum(notebook: Any, capsys: Any, size: str) -> None:
    path = notebook(["x = 1"])
    message = refused(capsys, ["run", str(path), "--memory-limit", size], path)
    assert message == (
        f"--memory-limit {size!r} is below the 64 MiB a kernel needs to start; give at least 64M"
    )


@pytest.mark.parametrize("size", ["64M", "64MiB", "65536K", str(64 * MiB), "0.0625G", "1G"])
def test_memory_limit_at_or_above_the_minimum_passes(notebook: Any, capsys: Any, size: str) -> None:
    # No kernel starts: the unknown kernel is refused after the limit was accepted.
    path = notebook(["x = 1"])
    unknown_kernel(capsys, ["run", str(path), "--memory-limit", size, "--kernel", NO_KERNEL], path)


def test_unreadable_memory_limit_still_gets_the_size_message(notebook: Any, capsys: Any) -> None:
    path = notebook(["x = 1"])
    message = refused(capsys, ["run", str(path), "--memory-limit", "0.1"], path)
    assert message == "memory size '0.1' must be more than zero"


# ------------------------------------------ item 8: outputs that could not be written


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.timeout(30)  # a FIFO that were opened for writing would block forever
@pytest.mark.parametrize("flag", ["--output"])
def test_output_that_is_a_fifo(notebook: Any, capsys: Any, fifo: Path, flag: str) -> None:
    # The real kernel: were the check missing, the run would go on and block at the end.
    path = notebook(["x = 1"])
    message = refused(capsys, ["run", str(path), flag, str(fifo)], path)
    assert message == f"{flag} {str(fifo)!r} is a named pipe (FIFO); give a regular file name"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize(("flag", "device"), [("--output", "/dev/null"), ("--output", "/dev/full")])
def test_output_that_is_a_device(notebook: Any, capsys: Any, flag: str, device: str) -> None:
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    path = notebook(["x = 1"])
    message = refused(capsys, ["run", str(path), flag, device], path)
    assert message == f"{flag} {device!r} is a character device; give a regular file name"


@pytest.mark.timeout(60)
def test_report_json_into_a_pipe_that_is_read(notebook: Any, capsys: Any, fifo: Path) -> None:
    # `--report-json /dev/stdout | jq`, `--report-json >(jq .)`: a pipe is written into,
    # never replaced, and its reader gets the report.
    import threading

    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    path = notebook(["x = 1"])
    code, _ = run_cli(["run", str(path), "--report-json", str(fifo)])
    reader.join(timeout=30)
    assert code == 0, capsys.readouterr().err
    assert json.loads(got[0])["outcome"] == "ok"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_symlink_to_a_fifo(notebook: Any, capsys: Any, tmp_path: Path, fifo: Path) -> None:
    path = notebook(["x = 1"])
    link = tmp_path / "out.ipynb"
    link.symlink_to(fifo)
    message = refused(capsys, ["run", str(path), "-o", str(link)], path)
    assert message == f"--output {str(link)!r} is a named pipe (FIFO); give a regular file name"


@pytest.mark.parametrize("flag", ["--output", "--report-json"])
@pytest.mark.parametrize("name", ["new/", "new/.", "new/.."])
def test_output_that_names_a_folder(
    notebook: Any,
    capsys: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
    name: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    path = notebook(["x = 1"])
    message = refused(capsys, ["run", str(path), flag, name], path)
    assert message == f"{flag} {name!r} names a directory, not a file; give a file name"
    assert not (tmp_path / "new").exists()


def test_output_symlink_into_a_missing_folder(notebook: Any, capsys: Any, tmp_path: Path) -> None:
    path = notebook(["x = 1"])
    link = tmp_path / "out.ipynb"
    link.symlink_to(tmp_path / "gone" / "out.ipynb")
    message = refused(capsys, ["run", str(path), "-o", str(link)], path)
    target_dir = os.path.realpath(tmp_path / "gone")
    assert message == f"--output {str(link)!r}: the directory {target_dir!r} does not exist"
    assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_existing_output_is_not_touched_by_a_refused_run(
    notebook: Any, capsys: Any, tmp_path: Path
) -> None:
    path = notebook(["x = 1"])
    out, report = tmp_path / "out.ipynb", tmp_path / "report.json"
    out.write_text("the user's earlier output")
    report.write_text('{"earlier": true}')
    os.utime(out, (1_000_000, 1_000_000))
    argv = ["run", str(path), "-o", str(out), "--report-json", str(report)]
    message = refused(capsys, [*argv, "--memory-limit", "10KB"], path)
    assert message.startswith("--memory-limit '10KB' is below")
    unknown_kernel(capsys, [*argv, "--kernel", NO_KERNEL], path)
    assert out.read_text() == "the user's earlier output"
    assert report.read_text() == '{"earlier": true}'
    assert os.stat(out).st_mtime == 1_000_000


def test_output_symlink_to_a_regular_file_passes(
    notebook: Any, capsys: Any, tmp_path: Path
) -> None:
    path = notebook(["x = 1"])
    (tmp_path / "real").mkdir()
    link = tmp_path / "out.ipynb"
    link.symlink_to(tmp_path / "real" / "out.ipynb")  # not there yet: its folder is
    unknown_kernel(capsys, ["run", str(path), "-o", str(link), "--kernel", NO_KERNEL], path)
    assert not (tmp_path / "real" / "out.ipynb").exists()


# Runs in a fresh process as uid/gid 65534 (root writes any file): imports first,
# while it may still read this Python's site-packages, then drops its privileges.
@pytest.mark.parametrize("flag", ["--output", "--report-json"])
def test_existing_output_that_is_not_writable(flag: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the command as another user")
    with tempfile.TemporaryDirectory(prefix="kd-inputs-") as directory:
        folder = Path(directory)
        os.chmod(folder, 0o777)  # the folder is writable; the file in it is not
        path = make_notebook(folder, ["x = 1"])
        os.chmod(path, 0o644)
        target = folder / "out.ipynb"
        target.write_text("root's file")
        os.chmod(target, 0o644)
        argv = ["run", str(path), flag, str(target)]
        need = [(str(target), os.F_OK, True), (str(target), os.W_OK, False)]
        proc = run_unprivileged(argv, need)  # as uid 65534, who may not write it
        message = check_refusal(*proc)
        assert message == f"{flag} {str(target)!r} exists and is not writable; give another file"
        assert target.read_text() == "root's file"
        assert sorted(os.listdir(folder)) == ["nb.ipynb", "out.ipynb"]


# --------------------------------------------- item 9: notebooks that are not files


def not_a_notebook(given: str, kind: str) -> str:
    return f"{given!r} is {kind}, not a notebook; give a regular .ipynb file"


@pytest.mark.timeout(30)  # a FIFO opened without O_NONBLOCK would block forever
def test_fifo_as_notebook(capsys: Any, fifo: Path) -> None:
    keep = fifo.parent / "keep"
    keep.write_text("x")
    message = refused(capsys, ["run", str(fifo)], keep)
    assert message == not_a_notebook(str(fifo), "a named pipe (FIFO)")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.timeout(30)
def test_fifo_swapped_in_after_the_first_look(
    capsys: Any, fifo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A FIFO that os.stat saw as a regular file (it was replaced between the looks):
    # opened O_NONBLOCK, so the open returns, and fstat refuses it before any read.
    real_stat = os.stat
    regular = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 100, 0, 0, 0))

    def fake_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if os.fspath(path) == str(fifo):
            return regular
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", fake_stat)
    keep = fifo.parent / "keep"
    keep.write_text("x")
    message = refused(capsys, ["run", str(fifo)], keep)
    assert message == not_a_notebook(str(fifo), "a named pipe (FIFO)")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.timeout(30)  # /dev/zero read whole would run until MemoryError
@pytest.mark.parametrize("how", ["direct", "symlink"])
def test_device_as_notebook(capsys: Any, tmp_path: Path, how: str) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    keep = tmp_path / "keep"
    keep.write_text("x")
    given = "/dev/zero"
    if how == "symlink":
        given = str(tmp_path / "zero.ipynb")
        os.symlink("/dev/zero", given)
    message = refused(capsys, ["run", given], keep)
    assert message == not_a_notebook(given, "a character device")


def test_notebook_larger_than_the_cap(capsys: Any, tmp_path: Path) -> None:
    path = tmp_path / "huge.ipynb"
    with open(path, "wb") as f:
        f.truncate(MAX_NOTEBOOK_SIZE + MiB)  # sparse: takes no disk, is never read
    keep = tmp_path / "keep"  # the big file is not hashed: reading it is slow
    keep.write_text("x")
    message = refused(capsys, ["run", str(path)], keep)
    assert os.stat(path).st_size == MAX_NOTEBOOK_SIZE + MiB
    assert message == (
        f"notebook {str(path)!r} is 513 MiB, more than the 512 MiB kernel-doctor reads; "
        "is it really a notebook?"
    )


def test_symlink_to_a_notebook_is_read(notebook: Any, capsys: Any, tmp_path: Path) -> None:
    path = notebook(["x = 1"])
    link = tmp_path / "link.ipynb"
    link.symlink_to(path)
    unknown_kernel(capsys, ["run", str(link), "--kernel", NO_KERNEL], path)


# ------------------------------------------------ a kernel at the minimum does start


def test_kernel_runs_at_the_minimum_limit(
    cgroup_parent: str, notebook: Any, capsys: Any, tmp_path: Path
) -> None:
    # Guards the constant: were it below what a kernel needs, this run would die.
    path = notebook(["x = 1", "print(x + 1)"])
    out = tmp_path / "out.ipynb"
    code, report = run_cli(
        ["run", str(path), "--memory-limit", "64M", "-o", str(out)], tmp_path / "report.json"
    )
    capsys.readouterr()
    assert code == 0, report
    assert report is not None and report["outcome"] == "ok", report
    assert out.exists()
