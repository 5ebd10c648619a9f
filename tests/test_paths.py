"""Private files and folders (agent.private) and where kernel-doctor keeps them (paths).

Another user's files are made here by chown to ``nobody`` (65534), which needs root;
tests/test_shared_machine.py tries the same attacks as a real second user."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from kernel_doctor.agent.private import (
    UntrustedFile,
    check_private_dir,
    open_fifo,
    open_private,
    printable,
    private_dir,
    read_private,
    write_atomic,
)
from kernel_doctor.agent.protocol import Meta, read_meta, write_meta
from kernel_doctor.paths import reports_dir, session_roots, sessions_dir, state_dir

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another user's files")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- the data dir ---------------------------------------------------------------------


def test_our_folder_is_in_the_data_dir_and_the_runtime_dir_stays_jupyters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # jupyter_client's test_kernelapp_lifecycle: after `jupyter kernel` the runtime
    # dir holds the connection file and nothing else.
    data, runtime = tmp_path / "share" / "jupyter", tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    assert state_dir() == str(data / "kernel-doctor")
    assert mode(data / "kernel-doctor") == 0o700
    assert mode(Path(sessions_dir())) == 0o700
    assert os.listdir(runtime) == []


@pytest.mark.parametrize("left", [0o700, 0o755, 0o775])  # 0775: an early version, umask 002
def test_reports_kept_in_the_runtime_dir_by_earlier_versions_move_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left: int
) -> None:
    data, runtime = tmp_path / "data", tmp_path / "runtime"
    old = runtime / "kernel-doctor"
    (old / "reports").mkdir(parents=True)
    (old / "sessions").mkdir()
    (old / "reports" / "r1.json").write_text("{}")
    runtime.chmod(left)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    assert Path(reports_dir(create=True), "r1.json").read_text() == "{}"
    assert os.listdir(runtime) == []  # the old folder went once empty
    assert mode(runtime) == 0o700  # it holds the server's token files


def test_an_old_folder_with_live_sessions_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, runtime = tmp_path / "data", tmp_path / "runtime"
    old = runtime / "kernel-doctor"
    (old / "sessions" / "python3-1-2").mkdir(parents=True)
    (old / "reports").mkdir()
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    state_dir()
    assert (old / "sessions" / "python3-1-2").is_dir()  # an older supervisor's, running
    assert (data / "kernel-doctor" / "reports").is_dir()


@as_root
def test_a_shared_sticky_data_dir_gets_a_folder_per_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    os.chown(shared, NOBODY, NOBODY)  # like /tmp: someone else's, open to all
    squat = shared / "kernel-doctor"
    squat.mkdir(mode=0o777)
    os.chown(squat, NOBODY, NOBODY)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(shared))
    assert state_dir() == str(shared / f"kernel-doctor-{os.geteuid()}")
    assert mode(shared / f"kernel-doctor-{os.geteuid()}") == 0o700


@as_root
def test_a_squatted_folder_of_ours_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    os.chown(shared, NOBODY, NOBODY)  # like /tmp: someone else's, open to all
    squat = shared / f"kernel-doctor-{os.geteuid()}"
    squat.mkdir(mode=0o700)
    os.chown(squat, NOBODY, NOBODY)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(shared))
    with pytest.raises(UntrustedFile) as refused:
        state_dir()
    assert (
        str(refused.value)
        == f"[Errno {errno.EPERM}] owned by uid {NOBODY}, not by this user: '{squat}'"
    )


@as_root
def test_a_shared_data_dir_without_the_sticky_bit_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Group members could rename our folder there and put theirs in its place.
    shared = tmp_path / "group"
    shared.mkdir()
    shared.chmod(0o2775)
    os.chown(shared, NOBODY, NOBODY)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(shared))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    assert state_dir() == str(tmp_path / f"kernel-doctor-{os.geteuid()}")
    assert os.listdir(shared) == []
    assert session_roots() == [str(tmp_path / f"kernel-doctor-{os.geteuid()}" / "sessions")]


# -- opening files --------------------------------------------------------------------


@pytest.mark.timeout(10)  # a blocking open would hang here
def test_a_fifo_where_a_file_belongs_is_refused_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "meta.json")
    t0 = time.monotonic()
    assert read_private(str(tmp_path / "meta.json")) is None
    assert read_meta(str(tmp_path)) is None
    with pytest.raises(UntrustedFile, match="not a regular file"):
        os.close(open_private(str(tmp_path / "meta.json")))
    assert time.monotonic() - t0 < 1


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("secret")
    (tmp_path / "link").symlink_to(target)
    assert read_private(str(tmp_path / "link")) is None
    with pytest.raises(OSError) as refused:
        open_private(str(tmp_path / "link"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    assert refused.value.errno == errno.ELOOP
    write_atomic(str(tmp_path / "link"), b"new")  # replaces the link itself
    assert target.read_text() == "secret"
    assert not (tmp_path / "link").is_symlink()
    assert (tmp_path / "link").read_bytes() == b"new" and mode(tmp_path / "link") == 0o600


@as_root
def test_another_users_file_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    write_meta(str(tmp_path), Meta(1, 2, 3, 4.0, session_name="planted"))
    assert read_meta(str(tmp_path)) is not None
    os.chown(path, NOBODY, NOBODY)
    assert read_meta(str(tmp_path)) is None
    with pytest.raises(UntrustedFile, match=f"owned by uid {NOBODY}"):
        open_private(str(path))


def test_control_must_be_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "control").write_text("")
    with pytest.raises(UntrustedFile, match="not a FIFO"):
        open_fifo(str(tmp_path / "control"), os.O_WRONLY)
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "linked").symlink_to(tmp_path / "pipe")
    with pytest.raises(OSError) as refused:
        open_fifo(str(tmp_path / "linked"), os.O_RDWR)
    assert refused.value.errno == errno.ELOOP


def test_private_folders(tmp_path: Path) -> None:
    made = Path(private_dir(str(tmp_path / "a")))
    assert mode(made) == 0o700
    made.chmod(0o755)  # one of ours, opened by an older version: closed again
    assert mode(Path(private_dir(str(made)))) == 0o700
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(UntrustedFile, match="not a folder"):
        check_private_dir(str(tmp_path / "link"))


def test_printable_escapes_terminal_sequences() -> None:
    assert printable("\x1b[31mEVIL\x1b[0m.ipynb") == "\\x1b[31mEVIL\\x1b[0m.ipynb"
    assert printable("a\nb\tc") == "a\\nb\\tc"
    assert printable("a\nb\tc", newlines=True) == "a\nb\tc"
    assert printable("données ✓") == "données ✓"


def test_a_look_nested_without_end_is_not_read(tmp_path: Path) -> None:
    from kernel_doctor.agent.protocol import read_look

    look = '{"nonce": "x", "busy": true}'
    for _ in range(5000):
        look = '{"busy": true, "ignored_interrupt": ' + look + "}"
    (tmp_path / "interrupt.json").write_text(look)
    assert read_look(str(tmp_path / "interrupt.json")) is None
    (tmp_path / "ok.json").write_text('{"nonce": "x", "busy": true, "os_threads": []}')
    assert read_look(str(tmp_path / "ok.json")) == {"nonce": "x", "busy": True, "os_threads": []}
    (tmp_path / "bad.json").write_text('{"nonce": "x", "os_threads": [{"tid": "1"}]}')
    assert read_look(str(tmp_path / "bad.json")) is None


def test_leftovers_of_killed_runs_are_removed(tmp_path: Path) -> None:
    from kernel_doctor.supervisor.recovery import recover_stale_sessions

    root = Path(private_dir(str(tmp_path / "sessions")))
    now = int(time.time() * 1000)
    gone = Path(private_dir(str(root / f"run-{2**22 + 7}-{now}")))  # no such pid
    (gone / "cells.jsonl").write_text('{"event": "start", "source": "secret"}\n')
    mine = Path(private_dir(str(root / f"papermill-{os.getpid()}-{now}")))  # still running
    later = Path(private_dir(str(root / f"run-{os.getpid()}-{now - 10**9}")))  # pid reused
    own = Path(private_dir(str(root / "1-2")))
    recover_stale_sessions(str(root), str(own))
    assert not gone.exists() and not later.exists()
    assert mine.exists() and own.exists()
