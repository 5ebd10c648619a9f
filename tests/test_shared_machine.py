"""Another local user against kernel-doctor on a shared machine (issue 11).

The test process (root) is the victim. A throwaway unprivileged user, made for this
module and removed at its end, is the attacker: everything it plants is created by a
process running as that user (``tests/attacker.py``). Against a real jupyter_server of
the victim, with a real supervised kernel, and against the victim's ``kernel-doctor
where`` / ``top``, it tries:

- FIFOs planted where session files are read (``meta.json``, ``state``,
  ``cells.jsonl``…) and as ``control``: a blocking open would freeze the server's event
  loop and the CLI;
- a ``control`` symlinked to a root-owned file (the canary): ``where`` would write into it;
- a fake supervisor process (its command line says ``kernel_doctor``, its child is its
  "kernel", its meta copies a real one and matches its start time) whose session
  claims the victim's kernel, is busy, has an HTML / escape-sequence notebook name and
  absurd memory figures, and answers ``where`` requests with escape sequences;
- squatted folders in the victim's ``$TMPDIR`` (``kernel-doctor-<uid>``, the old
  ``kernel-doctor-run-*``) and in a shared (1777) data dir (``kernel-doctor/sessions``,
  ``kernel-doctor-<uid>`` as a symlink);
- reading, renaming and swapping the victim's session folder.

Throughout, the victim's server must answer ``/api/status`` within 1 s, the fake must
appear nowhere, no file outside the victim's own folders may change (the canary, the
attacker's own planted files), and nothing of the victim's may be readable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from attacker import EVIL, FAKE_LIMIT, start_epoch, start_ticks
from conftest import make_notebook
from kernels import Kernels, assert_works, execute, write_kernelspecs
from test_server import Notebook, Server, running_server


def flight_record(session: Path) -> str:
    """The agent's records, raw: those in its log and those it still holds (read as
    root, who may read the victim's files, not through the owner checks)."""
    return "".join(
        (session / name).read_bytes().decode(errors="replace")
        for name in ("cells.jsonl", "held")
        if (session / name).exists()
    )


pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root: the test makes an unprivileged user to attack with",
)

SCRIPT = (Path(__file__).parent / "attacker.py").read_text()
ATTACKER_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/"}
UID = os.geteuid()
ESC = b"\x1b"
# Whatever of the fake shows up in an answer: its name, its absurd memory figures.
MARKERS = ("onerror", "EVIL", "7777777", "6666666", "7.777777", "6.666666")
# The victim's own notebook: a name with escape sequences (a file another user shared,
# say), and a cell whose running line has one.
VICTIM_NB = "victim \x1b[1mbold\x1b[0m nb.ipynb"
BUSY_CELL = 'import time\nwhile "\x1b[31mRED": time.sleep(0.05)\n'
STATUS_TIMEOUT = 1.0  # the server's /api/status, throughout
ANSWER_TIMEOUT = 8.0  # any other endpoint (a `where` look takes 0.3–0.7 s)
CLI_TIMEOUT = 20.0  # `kernel-doctor where` / `top`: longer is a hang
CANARY_TEXT = b"root's own file: kernel-doctor must never write here\n"
SESSION_FILES = ("state", "cells.jsonl", "samples.bin", "events.jsonl", "interrupt.json")


# -- the attacker ----------------------------------------------------------------------


@dataclass
class Attacker:
    name: str
    uid: int
    gid: int
    python: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def _as_user(self) -> dict[str, Any]:
        # extra_groups=[]: without it the child keeps root's supplementary groups.
        return {
            "user": self.uid,
            "group": self.gid,
            "extra_groups": [],
            "env": ATTACKER_ENV,
            "cwd": "/",
        }

    def argv(self, *args: str) -> list[str]:
        return [self.python, "-I", "-c", SCRIPT, *args]

    def run(self, *args: str) -> Any:
        done = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=30, **self._as_user()
        )
        assert done.returncode == 0, f"the attacker's {args[0]} failed:\n{done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else None

    def plant(self, ops: list[list[Any]]) -> None:
        self.run("plant", json.dumps(ops, default=str))

    def attempt(self, ops: list[list[Any]]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.run("try", json.dumps(ops, default=str))
        return result

    def start(self, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        """A long-running attacker process (its own session, so its whole group can be
        killed by its pid) and the JSON line it prints first."""
        proc = subprocess.Popen(
            self.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            **self._as_user(),
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        ready = select.select([proc.stdout], [], [], 20)[0]
        line = proc.stdout.readline() if ready else ""
        if not line:
            self.stop(proc)
            assert proc.stderr is not None
            raise AssertionError(f"the attacker's {args[0]} did not start:\n{proc.stderr.read()}")
        return proc, json.loads(line)

    def stop(self, proc: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group this test started
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)
        self.procs.clear()


def _attacker_python(uid: int, gid: int) -> str | None:
    """A Python the attacker can run (the test's own may live under root's 0700 home)."""
    candidates = [sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"]
    candidates.append(shutil.which("python3", path=ATTACKER_ENV["PATH"]) or "")
    for python in dict.fromkeys(c for c in candidates if c):
        try:
            done = subprocess.run(
                [python, "-I", "-c", "import json, select, struct"],
                user=uid,
                group=gid,
                extra_groups=[],
                env=ATTACKER_ENV,
                cwd="/",
                capture_output=True,
                timeout=30,
            )
        except OSError:
            continue
        if done.returncode == 0:
            return python
    return None


def _remove_user(name: str) -> None:
    for _ in range(10):
        done = subprocess.run(["userdel", name], capture_output=True, text=True)
        try:
            pwd.getpwnam(name)
        except KeyError:
            return
        time.sleep(0.3)
    raise AssertionError(f"cannot remove the user {name}: {done.stderr.strip()}")


@pytest.fixture(scope="module")
def attacker() -> Iterator[Attacker]:
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed")
    name = f"kd-attacker-{secrets.token_hex(2)}"
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot make a user: {made.stderr.strip()}")
    user = None
    try:
        entry = pwd.getpwnam(name)
        assert entry.pw_uid != 0 and entry.pw_gid != 0, entry
        python = _attacker_python(entry.pw_uid, entry.pw_gid)
        if python is None:
            pytest.skip("no Python that the unprivileged user can run")
        user = Attacker(name, entry.pw_uid, entry.pw_gid, python)
        who = user.run("whoami")
        assert who["uid"] == entry.pw_uid and who["gid"] == entry.pw_gid, who
        assert set(who["groups"]) <= {entry.pw_gid}, who  # none of root's groups
        yield user
    finally:
        if user is not None:
            user.stop_all()
        _remove_user(name)


@dataclass(frozen=True)
class Fake:
    pid: int  # the fake supervisor
    kernel_pid: int  # its child, the fake "kernel"
    ticks: int  # its start time, as /proc/PID/stat has it
    started: float  # the same, as seconds since the epoch


@pytest.fixture(scope="module")
def fake(attacker: Attacker) -> Fake:
    """The attacker's fake supervisor, started before any kernel of the victim: its
    sessions are the oldest, so a reader that trusted them would list them first."""
    _, info = attacker.start("fake-supervisor", "-m", "kernel_doctor.supervise", "--", "x")
    fake = Fake(info["pid"], info["kernel_pid"], info["ticks"], info["started"])
    # What the old checks looked at, it passes: the command line, the kernel's parent.
    with open(f"/proc/{fake.pid}/cmdline", "rb") as f:
        assert b"kernel_doctor" in f.read()
    assert psutil.Process(fake.kernel_pid).ppid() == fake.pid
    assert psutil.Process(fake.pid).uids().real == attacker.uid
    return fake


@pytest.fixture(scope="module")
def fake_plain_kernel(attacker: Attacker, shared_tmp: Path) -> int:
    """The attacker's process posing as a plain ipykernel, its connection file named
    with HTML and escape sequences; its pid."""
    _, info = attacker.start("plain-kernel", str(shared_tmp))
    pid = int(info["pid"])
    deadline = time.monotonic() + 10
    while b"ipykernel" not in Path(f"/proc/{pid}/cmdline").read_bytes():  # exec'd yet
        assert time.monotonic() < deadline, "the attacker's plain kernel did not start"
        time.sleep(0.02)
    return pid


def fake_meta(real: dict[str, Any], supervisor: int, kernel: int, fake: Fake) -> dict[str, Any]:
    """The victim's real meta.json, as the attacker rewrites it for its fake: the fake's
    pids and start time in place of the real ones (whatever the keys are called), the
    victim's connection file kept (so it claims the victim's kernel), an HTML and
    escape-sequence name, an absurd limit."""
    swap = {supervisor: fake.pid, kernel: fake.kernel_pid, start_ticks(supervisor): fake.ticks}
    real_start = start_epoch(supervisor)

    def convert(value: Any, key: str | None = None) -> Any:
        if isinstance(value, dict):
            return {k: convert(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, bool):
            return value
        if key in ("session_name", "kernel_name"):
            return EVIL
        if key == "limit_bytes":
            return FAKE_LIMIT
        if isinstance(value, int) and value in swap:
            return swap[value]
        if key == "started" and isinstance(value, float):
            return fake.started + (value - real_start)
        return value

    meta: dict[str, Any] = convert(real)
    meta.setdefault("session_name", EVIL)
    return meta


# -- shared folders, the canary, snapshots -----------------------------------------------


def shared_dir(prefix: str) -> Path:
    """A fresh world-writable sticky folder under /tmp, like /tmp itself."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o1777)
    return path


@pytest.fixture(scope="module")
def shared_tmp() -> Iterator[Path]:
    """The victim's $TMPDIR: world-writable, as /tmp is."""
    path = shared_dir("kd-shared-tmp-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_dirs() -> Iterator[Any]:
    made: list[Path] = []

    def make(prefix: str) -> Path:
        made.append(shared_dir(prefix))
        return made[-1]

    try:
        yield make
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim_base() -> Iterator[Path]:
    """A folder of the victim's that others may enter (0755), as a home often is."""
    path = Path(tempfile.mkdtemp(prefix="kd-victim-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Canary:
    path: Path
    mtime_ns: int

    def assert_intact(self) -> None:
        info = os.lstat(self.path)
        assert stat.S_ISREG(info.st_mode) and info.st_uid == 0
        assert self.path.read_bytes() == CANARY_TEXT, "the root-owned canary was written to"
        assert info.st_mtime_ns == self.mtime_ns, "the root-owned canary was written to"


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    fd, name = tempfile.mkstemp(prefix="kd-canary-", dir="/tmp")
    try:
        os.write(fd, CANARY_TEXT)
        os.fchmod(fd, 0o600)
        os.close(fd)
        yield Canary(Path(name), os.lstat(name).st_mtime_ns)
    finally:
        os.unlink(name)


@pytest.fixture(scope="module")
def squat(attacker: Attacker, shared_tmp: Path) -> Path:
    """In the victim's $TMPDIR, before the victim ever runs: the attacker's own
    ``kernel-doctor-<victim uid>/sessions`` (kernel-doctor's fallback place), and a
    private folder of the attacker's for its logs. Returns the sessions folder."""
    folder = shared_tmp / f"kernel-doctor-{UID}"
    attacker.plant(
        [
            ["mkdir", folder, 0o700],
            ["mkdir", folder / "sessions", 0o700],
            ["mkdir", shared_tmp / "attacker", 0o700],
        ]
    )
    return folder / "sessions"


def snapshot(*roots: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``roots`` (symlinks not followed, FIFOs never opened): type,
    mode, owner, size, mtime and the content of regular files."""
    found: dict[str, tuple[Any, ...]] = {}
    pending = [str(root) for root in roots]
    while pending:
        path = pending.pop()
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        content: str | None = None
        if stat.S_ISREG(info.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                content = hashlib.sha256(os.read(fd, 1 << 24)).hexdigest()
            finally:
                os.close(fd)
        elif stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        found[path] = (
            stat.S_IFMT(info.st_mode),
            stat.S_IMODE(info.st_mode),
            info.st_uid,
            info.st_size,
            info.st_mtime_ns,
            content,
        )
        if stat.S_ISDIR(info.st_mode):
            pending.extend(os.path.join(path, name) for name in os.listdir(path))
    return found


def attacker_roots(shared: Path, uid: int) -> list[Path]:
    """The attacker's own top-level entries in a shared folder."""
    return [p for p in shared.iterdir() if os.lstat(p).st_uid == uid]


def assert_refused(results: list[dict[str, Any]]) -> None:
    allowed = [r["op"] for r in results if r["ok"]]
    assert not allowed, f"the attacker could: {allowed}"
    wrong = [r for r in results if r["error"] != "PermissionError"]
    assert not wrong, f"refused, but not for want of permission: {wrong}"


# -- the victim ----------------------------------------------------------------------------


@dataclass
class Victim:
    server: Server
    notebook: Notebook
    kernel_id: str
    kernel_pid: int
    supervisor_pid: int
    session_dir: str
    meta: dict[str, Any]
    env: dict[str, str]  # the victim's, for its `kernel-doctor` commands


def kernel_of(server_pid: int, kernel_id: str) -> psutil.Process:
    needle = f"kernel-{kernel_id}.json"
    for proc in psutil.Process(server_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            argv = proc.cmdline()
            if (
                any("ipykernel_launcher" in a for a in argv)
                and any(needle in a for a in argv)
                and not any("kernel_doctor.supervise" in a for a in argv)
            ):
                return proc
    raise AssertionError(f"no ipykernel process for kernel {kernel_id}")


def session_of(kernel: psutil.Process) -> str:
    session = kernel.environ().get("KERNEL_DOCTOR_SESSION")
    assert session, "the kernel runs without a session: it is not supervised"
    return str(session)


@pytest.fixture(scope="module")
def victim(
    cgroup_parent: str,
    tmp_path_factory: pytest.TempPathFactory,
    shared_tmp: Path,
    squat: Path,
    fake: Fake,
) -> Iterator[Victim]:
    """The victim's jupyter_server (with kernel-doctor's extension, $TMPDIR the shared
    folder) and one supervised kernel of it, busy in a cell, its notebook named with
    escape sequences. Started after the attacker squatted and started its fake."""
    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("TMPDIR", str(shared_tmp))
            server = stack.enter_context(running_server(tmp_path_factory))
        notebook = Notebook(server, VICTIM_NB)
        stack.callback(notebook.close)
        kernel = kernel_of(server.process.pid, notebook.kernel_id)
        supervisor = psutil.Process(kernel.ppid())
        assert any("kernel_doctor.supervise" in a for a in supervisor.cmdline())
        session = session_of(kernel)
        with open(os.path.join(session, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        notebook.start_cell(BUSY_CELL)
        running = Victim(
            server,
            notebook,
            notebook.kernel_id,
            kernel.pid,
            supervisor.pid,
            session,
            meta,
            dict(
                os.environ,
                JUPYTER_DATA_DIR=str(server.data),
                TMPDIR=str(shared_tmp),
                COLUMNS="160",
            ),
        )
        # Until the agent says the cell runs, and the extension's metrics (polled every
        # 5 s) count the kernel: the state every test starts from.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answer = get(server, "/kernel-doctor/api/kernels", ANSWER_TIMEOUT)
            busy = answer.status == 200 and any(k.get("busy") for k in json.loads(answer.text))
            if busy and supervised_kernels(get(server, "/metrics", ANSWER_TIMEOUT)) == 1.0:
                break
            time.sleep(0.2)
        yield running


def supervised_kernels(metrics: Answer) -> float | None:
    found = re.search(r"^kernel_doctor_supervised_kernels (\S+)$", metrics.text, re.M)
    return float(found.group(1)) if metrics.status == 200 and found else None


# -- asking the victim's server ------------------------------------------------------------


@dataclass
class Answer:
    path: str
    status: int | None  # None: no answer in time
    text: str
    seconds: float


def get(server: Server, path: str, timeout: float) -> Answer:
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}",
        headers={"Authorization": f"token {server.token}"},
    )
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            text = response.read().decode(errors="replace")
            status: int | None = response.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read().decode(errors="replace"), exc.code
        exc.close()
    except (OSError, urllib.error.URLError) as exc:  # a timeout among them
        text, status = f"no answer within {timeout} s ({exc!r})", None
    return Answer(path, status, text, time.monotonic() - t0)


class StatusPoller:
    """Asks the server's /api/status every 0.2 s, in a thread, with a 1 s timeout."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StatusPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 5
        while len(self.answers) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.answers.append(get(self.server, "/api/status", STATUS_TIMEOUT))
            self._stop.wait(0.2)

    def assert_always_answered(self) -> None:
        assert len(self.answers) >= 3, self.answers
        late = [a for a in self.answers if a.status != 200 or a.seconds > STATUS_TIMEOUT]
        assert not late, f"/api/status did not answer within {STATUS_TIMEOUT} s: {late}"


# -- the victim's commands -------------------------------------------------------------------


@dataclass
class Cli:
    args: tuple[str, ...]
    returncode: int | None  # None: it hung
    out: bytes
    err: bytes

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    def assert_ok(self) -> None:
        assert self.returncode is not None, f"kernel-doctor {self.args} hung:\n{self.err!r}"
        assert self.returncode == 0, f"kernel-doctor {self.args}: {self.out!r}\n{self.err!r}"

    def assert_clean(self) -> None:
        """No raw escape byte, nothing of the fake's."""
        assert ESC not in self.out + self.err, f"a raw ESC was printed: {self.out!r}"
        both = (self.out + self.err).decode(errors="replace")
        shown = [m for m in MARKERS if m in both]
        assert not shown, f"the fake's {shown} printed: {both}"


def victim_cli(env: dict[str, str], *args: str) -> Cli:
    argv = [sys.executable, "-m", "kernel_doctor", *args]
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
        return Cli(args, None, exc.stdout or b"", exc.stderr or b"")
    return Cli(args, done.returncode, done.stdout, done.stderr)


# -- planting the attacks ------------------------------------------------------------------

ATTACKS = ("fifos", "symlinked-control", "answering-fake", "all")


@dataclass
class Planted:
    roots: list[Path]  # the attacker's folders, snapshotted
    folders: list[Path]  # the fake sessions, removed afterwards
    logs: list[Path]  # what each answering fake read from its control FIFO
    before: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def touched(self) -> list[str]:
        """What the victim changed of the attacker's files (none of its business), and
        the fakes' control FIFOs the victim wrote to (it asked a fake)."""
        after = snapshot(*self.roots)
        changed = sorted(
            p for p in self.before.keys() | after.keys() if self.before.get(p) != after.get(p)
        )
        return changed + [f"asked the fake: {p.read_bytes()!r}" for p in self.logs if p.exists()]

    def assert_untouched(self) -> None:
        touched = self.touched()
        assert not touched, f"the victim touched the attacker's files: {touched}"


def sessions_for(attack: str, meta: dict[str, Any], canary: Canary) -> dict[str, dict[str, Any]]:
    """The fake session folders (by name) of one attack."""
    parts: dict[str, dict[str, Any]] = {}
    if attack in ("fifos", "all"):
        parts["fifo-meta"] = {"meta": None, "fifos": ["meta.json"]}
        parts["fifo-files"] = {"meta": meta, "fifos": list(SESSION_FILES), "control": "fifo"}
    if attack in ("symlinked-control", "all"):
        parts["symlink"] = {"meta": meta, "control": "symlink", "target": str(canary.path)}
    if attack in ("answering-fake", "all"):
        parts["answering"] = {"meta": meta, "control": "fifo", "answer": True}
    return parts


@contextlib.contextmanager
def planted(
    attack: str,
    attacker: Attacker,
    fake: Fake,
    meta: dict[str, Any],
    canary: Canary,
    places: list[Path],
    roots: list[Path],
    logs_dir: Path,
) -> Iterator[Planted]:
    """The attack's fake sessions, planted by the attacker in each of ``places`` (a
    folder name ending in ``*`` makes a folder per session: the old
    ``kernel-doctor-run-*`` pattern). Afterwards: FIFOs a reader may still block on are
    opened for writing and closed (so a hung reader wakes up), the fakes removed."""
    ops: list[list[Any]] = []
    folders: list[Path] = []
    answering: list[Path] = []
    for name, options in sessions_for(attack, meta, canary).items():
        for place in places:
            folder = (
                place.parent / place.name.replace("*", name) if "*" in place.name else place / name
            )
            folders.append(folder)
            ops.append(["session", folder, {**options, "kernel_pid": fake.kernel_pid}])
            if options.get("answer"):
                answering.append(folder)
    attacker.plant(ops)
    responders = []
    logs = []
    for n, folder in enumerate(answering):
        logs.append(logs_dir / f"{attack}-{n}.log")
        responders.append(attacker.start("respond", str(folder / "control"), str(logs[-1])))
    result = Planted([*roots, *(f for f in folders if f.parent not in roots)], folders, logs)
    result.roots = sorted(set(result.roots))
    result.before = snapshot(*result.roots)
    try:
        yield result
    finally:
        for proc, _ in responders:
            attacker.stop(proc)
            attacker.procs.remove(proc)
        # A reader stuck in open() of a FIFO wakes up once anyone opens it for writing;
        # holding each open (read-write: never blocks) until the FIFOs are gone means a
        # reader in open() or read() of one now gets end-of-file when they are closed.
        held = []
        for folder in folders:
            for name in os.listdir(folder) if folder.is_dir() else []:
                path = os.path.join(folder, name)
                if stat.S_ISFIFO(os.lstat(path).st_mode):
                    held.append(os.open(path, os.O_RDWR | os.O_NONBLOCK))
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        for log in logs:
            with contextlib.suppress(FileNotFoundError):
                log.unlink()
        for fd in held:
            os.close(fd)


@contextlib.contextmanager
def attacking(
    attack: str, victim: Victim, attacker: Attacker, fake: Fake, canary: Canary, squat: Path
) -> Iterator[Planted]:
    """``attack`` against the victim's server and CLI: fake sessions in the squatted
    fallback folder and in the old ``$TMPDIR/kernel-doctor-run-*`` pattern."""
    shared = squat.parent.parent
    meta = fake_meta(victim.meta, victim.supervisor_pid, victim.kernel_pid, fake)
    with planted(
        attack,
        attacker,
        fake,
        meta,
        canary,
        places=[squat, shared / "kernel-doctor-run-*"],
        roots=[squat.parent, shared / "attacker"],
        logs_dir=shared / "attacker",
    ) as plant:
        yield plant


# -- the data dir and the sessions of `run` and of the supervisor--- -------------------------


def assert_private_chain(session: Path, base: Path) -> None:
    """Every folder from ``base`` (excluded) down to ``session`` is the victim's own,
    0700, and no symlink: nothing another user made or can rename inside."""
    assert os.path.realpath(session) == str(session), f"{session} goes through a symlink"
    assert base in session.parents, f"{session} is not under {base}"
    path = session
    while path != base:
        info = os.lstat(path)
        assert stat.S_ISDIR(info.st_mode), f"{path} is not a folder"
        assert info.st_uid == UID, f"{path} belongs to uid {info.st_uid}"
        assert stat.S_IMODE(info.st_mode) == 0o700, f"{path} is {stat.S_IMODE(info.st_mode):o}"
        path = path.parent


def assert_private_files(session: Path) -> None:
    for entry in session.iterdir():
        info = os.lstat(entry)
        assert info.st_uid == UID, f"{entry} belongs to uid {info.st_uid}"
        assert not stat.S_ISLNK(info.st_mode), f"{entry} is a symlink"
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISDIR(info.st_mode):
            assert mode == 0o700, f"{entry} is {mode:o}"
        else:
            assert mode & 0o077 == 0, f"{entry} is {mode:o}: other users may read it"


def steal(session: Path, base: Path, spare: Path) -> list[list[Any]]:
    """What the attacker tries against the victim's session folder: read its cell
    source and meta, list it, rename it away, swap its own folder ``spare`` in, and
    rename every folder above it up to ``base``."""
    ops: list[list[Any]] = [
        ["read", session / "cells.jsonl"],
        ["read", session / "meta.json"],
        ["listdir", session],
        ["rename", session, session.with_name(session.name + ".stolen")],
        ["rename", spare, session],
    ]
    path = session.parent
    while path != base:
        ops.append(["rename", path, base / f"stolen-{path.name}"])
        path = path.parent
    return ops


# A stand-in kernel for the supervisor: it writes to stderr (whose tail the supervisor
# keeps in the session, every 2 s) and, once the session holds meta.json and that tail,
# reports the session's folders and files as it sees them (they may go when it ends).
CHILD = """\
import json, os, sys, time
session = os.environ["KERNEL_DOCTOR_SESSION"]
sys.stderr.write("a line on the kernel's stderr\\n")
sys.stderr.flush()
deadline = time.monotonic() + 6
while time.monotonic() < deadline and not all(
    os.path.exists(os.path.join(session, name)) for name in ("meta.json", "stderr.log")
):
    time.sleep(0.02)
seen = {}
for name in [".", *os.listdir(session)]:
    path = os.path.normpath(os.path.join(session, name))
    info = os.lstat(path)
    seen[path] = [info.st_mode, info.st_uid]
path = os.path.dirname(session)
while path != os.environ["JUPYTER_DATA_DIR"] and path != "/":
    info = os.lstat(path)
    seen[path] = [info.st_mode, info.st_uid]
    path = os.path.dirname(path)
print(json.dumps({"session": session, "seen": seen}), flush=True)
"""


def test_the_supervisor_makes_the_data_dir_0700_and_keeps_sessions_private(
    victim_base: Path,
) -> None:
    runtime = victim_base / "runtime"  # missing: kernel-doctor makes it
    env = dict(os.environ, JUPYTER_DATA_DIR=str(runtime), TMPDIR=str(victim_base))
    env.pop("KERNEL_DOCTOR_DISABLE", None)
    done = subprocess.run(
        [sys.executable, "-m", "kernel_doctor.supervise", "--", sys.executable, "-c", CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    session = Path(report["session"])
    assert session.parent == runtime / "kernel-doctor" / "sessions", session
    info = os.lstat(runtime)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == UID
    assert stat.S_IMODE(info.st_mode) == 0o700, f"data dir made {info.st_mode & 0o777:o}"
    # Folders 0700, files (FIFO included) for the victim only, all the victim's.
    assert len(report["seen"]) > 3, report  # the session, its folders, some files
    for path, (mode, uid) in report["seen"].items():
        assert uid == UID, f"{path} belongs to uid {uid}"
        if stat.S_ISDIR(mode):
            assert stat.S_IMODE(mode) == 0o700, f"{path} is {stat.S_IMODE(mode):o}"
        else:
            assert not stat.S_ISLNK(mode), f"{path} is a symlink"
            assert mode & 0o077 == 0, f"{path} is {stat.S_IMODE(mode):o}: others may read it"
    assert not [p.name for p in victim_base.iterdir() if p.name.startswith("kernel-doctor")]


# Writes a line to the kernel's real stderr (fd 2: the supervisor keeps its tail in the
# session) and waits for that file, so every kind of session file is there to check.
STDERR_LINE = """\
import os as _kd_os, time as _kd_time
_kd_os.write(2, b"a line on the kernel's stderr\\n")
_kd_end = _kd_time.monotonic() + 6
_kd_tail = _kd_os.path.join(_kd_os.environ.get("KERNEL_DOCTOR_SESSION", "/"), "stderr.log")
while not _kd_os.path.exists(_kd_tail) and _kd_time.monotonic() < _kd_end:
    _kd_time.sleep(0.02)
"""

RUN_CELL = """\
import json, os, time
secret = {secret!r}
{stderr_line}
with open({info!r} + ".tmp", "w") as f:
    json.dump({{"session": os.environ.get("KERNEL_DOCTOR_SESSION"), "pid": os.getpid()}}, f)
os.replace({info!r} + ".tmp", {info!r})
deadline = time.monotonic() + 30
while not os.path.exists({flag!r}) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_run_keeps_its_session_private_in_the_data_dir(
    victim_base: Path, attacker: Attacker, shared_dirs: Any
) -> None:
    runtime = victim_base / "runtime"  # missing: `run` makes it
    tmp = shared_dirs("kd-shared-tmp-")
    secret = f"kd-secret-{secrets.token_hex(8)}"
    info, flag = victim_base / "info.json", victim_base / "go"
    cell = RUN_CELL.format(secret=secret, info=str(info), flag=str(flag), stderr_line=STDERR_LINE)
    nb = make_notebook(victim_base, [cell])
    env = dict(os.environ, JUPYTER_DATA_DIR=str(runtime), TMPDIR=str(tmp), COLUMNS="160")
    with open(victim_base / "run.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernel_doctor", "run", str(nb)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not info.exists():
            assert proc.poll() is None, (victim_base / "run.log").read_text()
            assert time.monotonic() < deadline, "the cell did not start"
            time.sleep(0.05)
        started = json.loads(info.read_text())
        session = Path(started["session"])
        # The session is in the data dir, which was made 0700: the victim's alone.
        assert session.parent == runtime / "kernel-doctor" / "sessions", session
        assert stat.S_IMODE(os.lstat(runtime).st_mode) == 0o700
        assert_private_chain(session, victim_base)
        assert secret in flight_record(session)
        spare = tmp / "spare"
        attacker.plant([["mkdir", spare, 0o777]])
        assert_refused(attacker.attempt(steal(session, victim_base, spare)))
        # `where` finds the run's kernel where it now is.
        where = victim_cli(env, "where", str(started["pid"]), "--json")
        where.assert_ok()
        assert json.loads(where.out)["kernel_pid"] == started["pid"]
        assert_private_files(session)
        flag.touch()
        assert proc.wait(timeout=60) == 0, (victim_base / "run.log").read_text()
    finally:
        flag.touch()
        if proc.poll() is None:  # it failed: end it and the kernel it started
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
            proc.kill()
            proc.wait()
    # Nothing in $TMPDIR: no kernel-doctor-run-* or -papermill-* folders any more.
    left = [p.name for p in tmp.iterdir() if p.name.startswith("kernel-doctor")]
    assert not left, left


# -- a shared data dir, squatted ---------------------------------------------------------------


@pytest.mark.parametrize("squatted", ["sessions", "sessions-and-uid-folder"])
def test_a_squatted_shared_data_dir_is_not_used_and_the_session_stays_private(
    squatted: str,
    attacker: Attacker,
    fake: Fake,
    canary: Canary,
    shared_dirs: Any,
    tmp_path: Path,
) -> None:
    """JUPYTER_DATA_DIR on a shared 1777 folder where the attacker made
    ``kernel-doctor/sessions`` first (and ``kernel-doctor-<uid>``, as a symlink to a
    folder of its own): the victim's kernel still starts supervised, in a folder of
    its own that the attacker can neither read nor rename nor swap; ``where`` sees
    the victim's kernel and none of the fakes planted in the squatted folders."""
    runtime = shared_dirs("kd-shared-runtime-")
    tmp = shared_dirs("kd-shared-tmp-")
    squats = [runtime / "kernel-doctor" / "sessions"]
    ops: list[list[Any]] = [
        ["mkdir", runtime / "kernel-doctor", 0o777],
        ["mkdir", squats[0], 0o777],
        ["mkdir", runtime / "spare", 0o777],
    ]
    if squatted == "sessions-and-uid-folder":
        own = runtime / "attacker-kd"
        squats.append(own / "sessions")
        ops += [
            ["mkdir", own, 0o777],
            ["mkdir", squats[1], 0o777],
            ["symlink", own, runtime / f"kernel-doctor-{UID}"],
        ]
    attacker.plant(ops)

    kernels = Kernels(write_kernelspecs(tmp_path))
    env = dict(os.environ, JUPYTER_DATA_DIR=str(runtime), TMPDIR=str(tmp), COLUMNS="160")
    env.pop("KERNEL_DOCTOR_DISABLE", None)
    secret = f"kd-secret-{secrets.token_hex(8)}"
    try:
        with open(tmp_path / "kernel.err", "wb") as err:
            kernel = kernels.start("supervised", env=env, stderr=err)  # asserts supervised
        assert kernel.kc is not None
        reply, _ = execute(kernel.kc, f"secret = {secret!r}\n{STDERR_LINE}")
        assert reply["status"] == "ok", reply
        ipykernel = kernel.kernel_process()
        session = Path(session_of(ipykernel))
        meta = json.loads((session / "meta.json").read_text())

        # The attacker now plants busy fakes claiming the victim's kernel in its folders.
        fake_sessions = fake_meta(meta, ipykernel.ppid(), ipykernel.pid, fake)
        with planted(
            "symlinked-control",
            attacker,
            fake,
            fake_sessions,
            canary,
            places=squats,
            roots=attacker_roots(runtime, attacker.uid),
            logs_dir=tmp_path,
        ) as plant:
            # Not in the attacker's folders: in one of the victim's own, 0700 to the top.
            base = runtime if runtime in session.parents else tmp
            assert_private_chain(session, base)
            assert secret in flight_record(session)
            assert_refused(attacker.attempt(steal(session, base, runtime / "spare")))

            where = victim_cli(env, "where", "--json")
            where.assert_ok()
            where.assert_clean()
            assert json.loads(where.out)["kernel_pid"] == ipykernel.pid
            plant.assert_untouched()
        canary.assert_intact()
        assert_works(kernel.kc)  # the victim's kernel runs on
        if squatted == "sessions-and-uid-folder":
            # Both places in the data dir refused: evidence goes to $TMPDIR's private
            # folder, with one warning line in the kernel's log.
            assert tmp in session.parents
            said = (tmp_path / "kernel.err").read_text(errors="replace").splitlines()
            warnings = [line for line in said if line.startswith("kernel-doctor:")]
            assert len(warnings) == 1 and "warning" in warnings[0], warnings
        assert_private_files(session)
    finally:
        kernels.close()


# -- the victim's server and CLI under attack --------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_victims_server_stays_up_and_never_shows_the_fake(
    attack: str,
    victim: Victim,
    attacker: Attacker,
    fake: Fake,
    canary: Canary,
    squat: Path,
) -> None:
    """While the attack is planted, /api/status answers within 1 s every time; the
    extension lists the victim's kernel once, with its own pid, and no fake; the look
    inside the victim's kernel answers 200 from its real supervisor (not 503 after
    asking a fake); /metrics counts one supervised kernel. Nothing of the fake (its
    name, its figures) is in any answer; the canary and the attacker's files are as
    they were (the victim wrote to no FIFO of the attacker's)."""
    server = victim.server
    base = "/kernel-doctor/api/kernels"
    with (
        attacking(attack, victim, attacker, fake, canary, squat) as plant,
        StatusPoller(server) as status,
    ):
        kernels = get(server, base, ANSWER_TIMEOUT)
        where = get(server, f"{base}/{victim.kernel_id}/where", ANSWER_TIMEOUT)
        answers = [kernels, where, get(server, "/metrics", ANSWER_TIMEOUT)]
        if attack == "all":  # past the metrics' next poll (every 5 s)
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                answers += [get(server, "/metrics", ANSWER_TIMEOUT), get(server, base, 5)]
                time.sleep(0.5)
        touched = plant.touched()

    status.assert_always_answered()
    assert not touched, f"the victim touched the attacker's files: {touched}"
    for answer in answers:
        assert answer.status == 200, answer
        assert answer.seconds < ANSWER_TIMEOUT, answer
        shown = [m for m in MARKERS if m in answer.text]
        assert not shown, f"{answer.path} shows the fake's {shown}: {answer.text[:2000]}"
    listed = json.loads(kernels.text)
    mine = [k for k in listed if k.get("kernel_id") == victim.kernel_id]
    assert [k.get("pid") for k in mine] == [victim.kernel_pid], listed
    assert not [k for k in listed if k.get("pid") in (fake.pid, fake.kernel_pid)], listed
    assert json.loads(where.text).get("kernel_pid") == victim.kernel_pid, where.text[:2000]
    for answer in answers:  # the victim's kernel, counted once; no fake with it
        if answer.path == "/metrics":
            assert supervised_kernels(answer) == 1.0, answer.text[-3000:]
    canary.assert_intact()


@pytest.mark.parametrize("attack", ATTACKS)
def test_where_is_not_fooled(
    attack: str,
    victim: Victim,
    attacker: Attacker,
    fake: Fake,
    canary: Canary,
    squat: Path,
) -> None:
    """`kernel-doctor where` with no kernel named (it picks the one busy kernel) does not
    hang, looks at the victim's kernel, not the busy fake, prints no raw escape and
    nothing of the fake's, and writes into nothing of the attacker's."""
    with attacking(attack, victim, attacker, fake, canary, squat) as plant:
        where = victim_cli(victim.env, "where")  # no kernel named: it picks the busy one
        touched = plant.touched()
    where.assert_ok()
    where.assert_clean()
    first = where.text.splitlines()[0]
    assert first.startswith(f"kernel {victim.kernel_pid} "), where.text
    assert f"kernel {fake.kernel_pid}" not in where.text
    assert not touched, f"the victim touched the attacker's files: {touched}"
    canary.assert_intact()


@pytest.mark.parametrize("attack", ATTACKS)
def test_top_is_not_fooled(
    attack: str,
    victim: Victim,
    attacker: Attacker,
    fake: Fake,
    fake_plain_kernel: int,
    canary: Canary,
    squat: Path,
) -> None:
    """Neither the fake supervised kernel nor the attacker's own "plain kernel" (another
    user's process) is listed: `top` lists only the victim's kernels."""
    with attacking(attack, victim, attacker, fake, canary, squat) as plant:
        top = victim_cli(victim.env, "top", "--once")
        touched = plant.touched()
    top.assert_ok()
    top.assert_clean()
    rows = top.text.splitlines()
    assert any(re.match(rf"\s*{victim.kernel_pid}\s", row) for row in rows), top.text
    for pid in (fake.kernel_pid, fake.pid, fake_plain_kernel):
        assert not any(re.match(rf"\s*{pid}\s", row) for row in rows), top.text
    assert not touched, f"the victim touched the attacker's files: {touched}"
    canary.assert_intact()


def test_where_escapes_the_control_characters_of_the_victims_own_session(
    victim: Victim,
) -> None:
    """The victim's own kernel, whose notebook name and running line hold escape
    sequences: `where` shows them escaped, as ``\\x1b``."""
    where = victim_cli(victim.env, "where", str(victim.kernel_pid))
    where.assert_ok()
    assert ESC not in where.out + where.err, where.out
    first = where.text.splitlines()[0]
    assert first.startswith(f"kernel {victim.kernel_pid} "), where.text
    assert VICTIM_NB.replace("\x1b", "\\x1b") in first, first
    assert '"\\x1b[31mRED"' in where.text, where.text
