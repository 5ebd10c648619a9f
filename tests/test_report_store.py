"""Stored reports that are not reports, the pruning settings, and --report-json paths
(issue 11, items 10, 11 and 6).

- Item 10: a file in the reports folder with wrong field types, a JSON null, or one
  that cannot be read is skipped with one warning line by ``reports`` and ``show
  latest`` (which shows the newest valid one), is a one-line error with exit 2 for
  ``show ID``, and is left out of the server's list and 404 for itself.
- Item 11: KERNEL_DOCTOR_KEEP_REPORTS=0 / KERNEL_DOCTOR_KEEP_DAYS=0 keep the report
  just written (and only it); a bad value warns once and the default applies.
- Item 6: ``write_json`` follows a symlink to its target, writes into a device or
  FIFO without replacing it, and replaces a regular file atomically; an error writing
  is a one-line ``UsageError`` (exit 2).

No test here starts a kernel: the run in the CLI-level checks is stubbed.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import make_notebook, run_cli
from kernel_doctor._errors import ExitCode, UsageError
from kernel_doctor.reports import store
from kernel_doctor.reports.model import empty_report
from kernel_doctor.reports.store import ReportNotWritten, encode, publish, write_json
from test_reports import death, real_report, write_report

try:
    import pytest_jupyter  # noqa: F401

    pytest_plugins = ["pytest_jupyter.jupyter_server"]
    HAVE_JUPYTER_FIXTURES = True
except ImportError:  # the server tests are skipped
    HAVE_JUPYTER_FIXTURES = False

WARNING = "kernel-doctor: warning: "
ERROR = "kernel-doctor: error: "
GOOD_OLD, GOOD_NEW = "20261125-120000-4242", "20261125-120001-4343"
BAD = "20261125-120002-4444"  # the newest: wrong field types
BAD_TYPES = {"outcome": "kernel_died", "id": BAD, "memory": {"peak_bytes": "lots"}}
BAD_TYPES_WHY = "memory.peak_bytes: expected an integer or null, found a string"
ADVICE = "(kernel-doctor cannot read it as a report; delete the file to stop this warning)"
UNREADABLE = "cannot be read: it is gone, larger than 16 MiB, or not this user's own regular file"


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data dir (0700) with two real stored reports in it."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(runtime))
    for name in ("KERNEL_DOCTOR_KEEP_REPORTS", "KERNEL_DOCTOR_KEEP_DAYS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(store, "_warned", set())  # each test sees its own first warning
    directory = runtime / "kernel-doctor" / "reports"
    write_report(directory, "20261125-120000", 4242, session_name="/home/u/a.ipynb")
    write_report(directory, "20261125-120001", 4343, session_name="/home/u/b.ipynb")
    runtime.joinpath("kernel-doctor").chmod(0o700)
    return directory


def put(directory: Path, name: str, content: bytes) -> Path:
    path = directory / f"{name}.json"
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code, _ = run_cli(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


# -- item 10: reports that are not reports -------------------------------------------


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (json.dumps(BAD_TYPES).encode(), BAD_TYPES_WHY),
        (b"null", "expected a JSON object, found null"),
        (
            b'{"outcome": "kernel_died", "id": "20261125-120002-1"}',
            "id: expected the file's name without .json",
        ),
        (b'{"outcome": "kernel_', "not valid JSON (JSONDecodeError)"),
        # Numbers no formatter survives (json reads them all): invalid, not a crash.
        (
            b'{"outcome": "kernel_died", "id": "' + BAD.encode() + b'", "line": NaN}',
            "not valid JSON (ValueError)",
        ),
        (
            b'{"outcome": "kernel_died", "id": "' + BAD.encode() + b'", "kernel": '
            b'{"ended": 1e999}}',
            "kernel.ended: expected a number or null, found a number",
        ),
        (
            b'{"outcome": "kernel_died", "id": "' + BAD.encode() + b'", "memory": '
            b'{"peak_bytes": 1' + b"0" * 400 + b"}}",
            "memory.peak_bytes: expected an integer or null, found a number",
        ),
    ],
)
def test_reports_skips_a_bad_report_with_one_warning(
    reports: Path, capsys: Any, content: bytes, why: str
) -> None:
    bad = put(reports, BAD, content)
    code, out, err = cli(capsys, "reports")
    assert code == 0
    assert err.splitlines() == [f"{WARNING}skipped {bad}: {why} {ADVICE}"]
    assert GOOD_OLD in out and GOOD_NEW in out and BAD not in out
    code, out, err = cli(capsys, "reports", "--json")
    assert code == 0 and len(err.splitlines()) == 1
    assert [r["id"] for r in json.loads(out)] == [GOOD_NEW, GOOD_OLD]


def test_show_latest_takes_the_newest_valid_report(reports: Path, capsys: Any) -> None:
    bad = put(reports, BAD, json.dumps(BAD_TYPES).encode())
    code, out, err = cli(capsys, "show", "latest", "--json")
    assert code == 0
    assert json.loads(out)["id"] == GOOD_NEW
    assert err.splitlines() == [f"{WARNING}skipped {bad}: {BAD_TYPES_WHY} {ADVICE}"]
    code, out, err = cli(capsys, "show")  # rendered: "latest" is the default
    assert code == 0 and "Out of memory at In [3], line 2" in out


@pytest.mark.timeout(30)  # a FIFO opened blocking would hang the command
@pytest.mark.parametrize("kind", ["fifo", "symlink", "other user's", "too large"])
def test_show_latest_past_an_unreadable_newest_report(
    reports: Path, capsys: Any, tmp_path: Path, kind: str
) -> None:
    bad = reports / f"{BAD}.json"
    if kind == "fifo":
        os.mkfifo(bad, 0o600)
    elif kind == "symlink":
        target = put(
            tmp_path,
            "elsewhere",
            json.dumps(real_report("20261125-120002", 4444).to_json()).encode(),
        )
        bad.symlink_to(target)
    elif kind == "other user's":
        if os.geteuid() != 0:
            pytest.skip("needs root, to give the file to another user")
        put(reports, BAD, encode(real_report("20261125-120002", 4444)))
        os.chown(bad, 65534, 65534)
    else:
        with open(bad, "wb") as f:
            f.truncate(16 * 1024**2 + 1)  # sparse
    code, out, err = cli(capsys, "show", "latest", "--json")
    assert code == 0
    assert json.loads(out)["id"] == GOOD_NEW
    assert err.splitlines() == [f"{WARNING}skipped {bad}: {UNREADABLE} {ADVICE}"]


def test_show_a_bad_report_by_id_is_a_one_line_error(reports: Path, capsys: Any) -> None:
    bad = put(reports, BAD, json.dumps(BAD_TYPES).encode())
    for argv in (["show", BAD], ["show", BAD, "--json"]):
        code, out, err = cli(capsys, *argv)
        assert code == ExitCode.USAGE and int(ExitCode.USAGE) == 2
        assert out == ""
        assert err.splitlines() == [
            f"{ERROR}report {BAD!r} is not a report kernel-doctor can read ({BAD_TYPES_WHY}); "
            f"delete {bad} (`kernel-doctor reports` lists the valid ones)"
        ]


def test_show_latest_with_no_valid_report(reports: Path, capsys: Any) -> None:
    for path in reports.iterdir():
        path.write_text("null")
    code, out, err = cli(capsys, "show", "latest")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 3 and all(line.startswith(WARNING) for line in lines[:2])
    assert lines[2] == (
        f"{ERROR}no stored report 'latest': `kernel-doctor reports` lists the stored ones"
    )


@pytest.mark.skipif(not HAVE_JUPYTER_FIXTURES, reason="needs pytest-jupyter")
class TestServer:
    @pytest.fixture
    def jp_server_config(self) -> dict[str, Any]:
        return {"ServerApp": {"jpserver_extensions": {"kernel_doctor.server": True}}}

    @pytest.fixture
    def served(self, jp_data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        directory = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernel-doctor" / "reports"
        write_report(directory, "20261125-120000", 4242, session_name="/home/u/a.ipynb")
        put(directory, BAD, json.dumps(BAD_TYPES).encode())
        put(directory, "20261125-120003-5555", b"null")
        return directory

    async def test_bad_reports_are_left_out_and_404(
        self, jp_fetch: Any, jp_serverapp: Any, served: Path
    ) -> None:
        from tornado.httpclient import HTTPClientError

        logged: list[str] = []
        jp_serverapp.log.warning = lambda text, *args: logged.append(text % args)
        response = await jp_fetch("kernel-doctor", "api", "reports")
        assert response.code == 200
        assert [r["id"] for r in json.loads(response.body)] == [GOOD_OLD]
        one = await jp_fetch("kernel-doctor", "api", "reports", GOOD_OLD)
        assert json.loads(one.body) == json.loads((served / f"{GOOD_OLD}.json").read_text())
        for bad in (BAD, "20261125-120003-5555"):
            with pytest.raises(HTTPClientError) as error:
                await jp_fetch("kernel-doctor", "api", "reports", bad)
            assert error.value.code == 404
        assert (
            f"kernel-doctor: skipped {served / f'{BAD}.json'}: {BAD_TYPES_WHY} {ADVICE}" in logged
        )
        await jp_fetch("kernel-doctor", "api", "reports")
        assert len(logged) == len(set(logged))  # each file named once, not at every request


# -- item 11: pruning ------------------------------------------------------------------


def old_reports(directory: Path) -> list[Path]:
    return sorted(directory.glob("2026*.json"))


@pytest.mark.parametrize("setting", ["KERNEL_DOCTOR_KEEP_REPORTS", "KERNEL_DOCTOR_KEEP_DAYS"])
def test_keeping_zero_keeps_the_report_just_written(
    reports: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv(setting, "0")
    session = tmp_path / "session"
    session.mkdir(mode=0o700)
    assert len(old_reports(reports)) == 2
    ev, dx = death(4545, session_name="/home/u/c.ipynb")
    stored = publish(ev, dx, str(session), None, quiet=True)
    assert stored is not None
    assert [p.name for p in reports.glob("*.json")] == [os.path.basename(stored)]
    assert capsys.readouterr().err == ""
    code, out, _ = cli(capsys, "show", "latest", "--json")
    assert code == 0 and json.loads(out)["kernel"]["pid"] == 4545


@pytest.mark.parametrize(
    ("setting", "value", "unit", "default"),
    [
        ("KERNEL_DOCTOR_KEEP_REPORTS", "abc", "reports", 200),
        ("KERNEL_DOCTOR_KEEP_REPORTS", "-3", "reports", 200),
        ("KERNEL_DOCTOR_KEEP_DAYS", "1.5", "days", 30),
        ("KERNEL_DOCTOR_KEEP_DAYS", "-3", "days", 30),
    ],
)
def test_a_bad_setting_warns_once_and_the_default_applies(
    reports: Path,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    value: str,
    unit: str,
    default: int,
) -> None:
    monkeypatch.setenv(setting, value)
    capsys.readouterr()
    assert store.prune(str(reports)) == []  # the defaults: both young, two of 200
    assert store.prune(str(reports)) == []
    assert capsys.readouterr().err.splitlines() == [
        f"{WARNING}{setting}={value!r} is not a whole number (0 or more); "
        f"using the default, {default} {unit}"
    ]
    assert len(old_reports(reports)) == 2


# -- item 6: --report-json paths ------------------------------------------------------

DOC = empty_report("ok", "The notebook ran to the end.")
DATA = encode(DOC)


def test_a_new_file_is_made_0600(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_json(str(target), DOC)
    assert json.loads(target.read_text()) == DOC
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["report.json"]  # no temp file left


def test_a_regular_file_is_replaced_and_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("the user's earlier report")
    target.chmod(0o644)
    before = target.stat().st_ino
    write_json(str(target), DOC)
    assert target.read_bytes() == DATA
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.stat().st_ino != before  # a new file renamed over it: never half-written


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another user's file")
def test_another_users_file_lends_neither_owner_nor_mode(tmp_path: Path) -> None:
    # As root writing into a shared folder: a file another user put (or swapped) there
    # is replaced by one of ours, 0600, never given its owner or its mode.
    target = tmp_path / "report.json"
    target.write_text("planted")
    target.chmod(0o666)
    os.chown(target, 65534, 65534)
    write_json(str(target), DOC)
    info = target.stat()
    assert target.read_bytes() == DATA
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o600)


@pytest.mark.parametrize("exists", [True, False])
def test_a_symlink_is_followed_to_its_target(tmp_path: Path, exists: bool) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "report.json"
    if exists:
        target.write_text("old")
        target.chmod(0o640)
    link = tmp_path / "report.json"
    link.symlink_to(target)
    write_json(str(link), DOC)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == DATA
    assert stat.S_IMODE(target.stat().st_mode) == (0o640 if exists else 0o600)


def device(tmp_path: Path, name: str, minor: int) -> Path:
    """A character device node of our own (1, ``minor``: 3 is null, 7 is full), so the
    test never writes to the machine's /dev."""
    path = tmp_path / name
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, minor))
        os.close(os.open(path, os.O_WRONLY))
    except OSError as exc:
        pytest.skip(f"cannot make and open a device node here: {exc.strerror}")
    return path


def test_a_full_device_is_a_one_line_error_and_stays_a_device(tmp_path: Path) -> None:
    full = device(tmp_path, "full", 7)  # as /dev/full: every write fails with ENOSPC
    before = os.stat(full)
    with pytest.raises(ReportNotWritten) as caught:
        write_json(str(full), DOC)
    assert isinstance(caught.value, UsageError) and caught.value.exit_code == 2
    assert str(caught.value) == (
        f"cannot write the report to {str(full)!r}: No space left on device; "
        "give another path for it"
    )
    after = os.stat(full)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert after.st_ino == before.st_ino
    assert os.listdir(tmp_path) == ["full"]  # no temp file beside it
    # The same device as an open descriptor (`--report-json /dev/stdout >/dev/full`).
    fd = os.open(full, os.O_WRONLY)
    try:
        with pytest.raises(ReportNotWritten) as caught:
            write_json(f"/proc/self/fd/{fd}", DOC)
    finally:
        os.close(fd)
    assert str(caught.value) == (
        f"cannot write the report to '/proc/self/fd/{fd}': No space left on device; "
        "give another path for it"
    )


def test_a_device_is_written_into_not_replaced(tmp_path: Path) -> None:
    null = device(tmp_path, "null", 3)
    before = os.stat(null)
    link = tmp_path / "report.json"
    link.symlink_to(null)  # through a symlink, as /dev/stdout is one
    write_json(str(link), DOC)
    after = os.stat(null)
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
    assert link.is_symlink()


@pytest.mark.parametrize("stdout", ["pipe", "file"])
def test_dev_stdout_prints_the_report(tmp_path: Path, stdout: str) -> None:
    # `kernel-doctor run ... --report-json /dev/stdout | jq`, or `> out.txt`: the JSON
    # goes between what was printed before and after, and a file stays the same file.
    code = (
        "import sys\n"
        "from kernel_doctor.reports.store import write_json\n"
        "print('before')\n"
        f"write_json('/dev/stdout', {DOC!r})\n"
        "print('after')\n"
    )
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        inode = os.fstat(f.fileno()).st_ino
        done = subprocess.run(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE if stdout == "pipe" else f,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    printed = done.stdout if stdout == "pipe" else out.read_bytes()
    assert printed == b"before\n" + DATA + b"after\n"
    assert out.stat().st_ino == inode


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pipe"
    os.mkfifo(path, 0o600)
    yield path


@pytest.mark.timeout(30)
def test_a_fifo_with_a_reader_is_written_into(fifo: Path) -> None:
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    try:
        for _ in range(500):  # the reader's open, which blocks until a writer comes
            try:
                write_json(str(fifo), DOC)
                break
            except ReportNotWritten as exc:
                assert "no program is reading" in str(exc)
                threading.Event().wait(0.01)
    finally:
        reader.join(10)
    assert got == [DATA]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.timeout(30)  # opened blocking, it would wait for a reader forever
def test_a_fifo_without_a_reader_is_an_error_not_a_hang(fifo: Path) -> None:
    with pytest.raises(ReportNotWritten) as caught:
        write_json(str(fifo), DOC)
    assert str(caught.value) == (
        f"cannot write the report to {str(fifo)!r}: no program is reading that FIFO; "
        "start its reader first; give another path for it"
    )
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportNotWritten) as caught:
        write_json(str(tmp_path), DOC)
    assert str(caught.value) == (
        f"cannot write the report to {str(tmp_path)!r}: it is a directory; give another path for it"
    )


def test_a_full_disk_leaves_the_old_file_and_no_temp_file(full_disk: Path) -> None:
    target = full_disk / "report.json"
    target.write_text("")  # fits: an empty file takes no block
    with pytest.raises(ReportNotWritten) as caught:
        write_json(str(target), DOC)
    assert str(caught.value) == (
        f"cannot write the report to {str(target)!r}: No space left on device; "
        "give another path for it"
    )
    assert os.listdir(full_disk) == ["report.json"] and target.read_text() == ""


# CLI level: the run itself stubbed (no kernel), the report written as `run` writes it.


@pytest.fixture
def stub_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat

    from kernel_doctor import batch

    def run_notebook(nb: Any, **kwargs: Any) -> batch.BatchResult:
        return batch.BatchResult("ok", ExitCode.OK, dict(DOC), nbformat.v4.new_notebook())

    monkeypatch.setattr(batch, "run_notebook", run_notebook)


def test_cli_report_json_through_a_symlink(stub_run: None, tmp_path: Path, capsys: Any) -> None:
    notebook = make_notebook(tmp_path, ["x = 1"])
    target = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(target)
    code, out, _ = cli(capsys, "run", str(notebook), "--report-json", str(link))
    assert code == 0 and "kernel-doctor: ok" in out
    assert link.is_symlink() and target.read_bytes() == DATA


def test_cli_report_json_on_a_full_disk(
    stub_run: None, tmp_path: Path, full_disk: Path, capsys: Any
) -> None:
    notebook = make_notebook(tmp_path, ["x = 1"])
    target = full_disk / "report.json"
    code, out, err = cli(capsys, "run", str(notebook), "--report-json", str(target))
    # The run's summary is shown first, so the failed report hides nothing of the run.
    assert code == ExitCode.USAGE and "The notebook ran to the end." in out
    assert err.splitlines()[-1] == (
        f"{ERROR}cannot write the report to {str(target)!r}: No space left on device; "
        "give another path for it"
    )
    assert os.listdir(full_disk) == []
