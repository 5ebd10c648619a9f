"""``kernel-doctor run --memory-limit`` as a normal user, through a real systemd user
manager's ``systemd-run --user --scope``: the path every non-root user of a systemd
machine takes. Only inside the VM guest of tests/vm/run.py; elsewhere it skips.

The guest has no systemd as PID 1 (``vng --systemd`` hangs in
systemd-tmpfiles-setup.service on the 9p root), so the fixture does what logind and
``user@.service`` do for a lingering user: a delegated cgroup
``user.slice/user-UID.slice/user@UID.service`` owned by the user, ``systemd --user``
started there as the user, and the caller placed under it (as a process of the user's
own services is). The scope, its MemoryMax and the move of the kernel are systemd's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from conftest import make_notebook, note_for_the_vm_harness, remove_cgroup_tree

MiB = 1024**2
ROOT = Path("/sys/fs/cgroup")
SYSTEMD = "/lib/systemd/systemd"
UID = 2345
NAME = "kd-vm-user"


def _why_not() -> str | None:
    # Bind mounts over /etc/passwd and /root are made below: never outside the guest.
    if not os.environ.get("KERNEL_DOCTOR_IN_VM"):
        return "only inside the VM guest (tests/vm/run.py)"
    if not (ROOT / "cgroup.controllers").exists() or os.geteuid() != 0:
        return "needs root on a cgroup v2 hierarchy"
    for tool in (SYSTEMD, shutil.which("systemd-run"), shutil.which("setpriv")):
        if not tool or not os.path.exists(tool):
            return "systemd, systemd-run or setpriv is not installed"
    return None


pytestmark = [pytest.mark.vm, pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))]


@dataclass(frozen=True)
class User:
    uid: int
    home: Path
    env: dict[str, str]
    caller: Path  # the cgroup its commands start in, under its user manager

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        def join() -> None:  # as root, before setpriv drops to the user
            (self.caller / "cgroup.procs").write_text(str(os.getpid()))

        drop = ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups"]
        return subprocess.run(
            [*drop, "--", *argv],
            env=self.env,
            cwd=self.home,
            preexec_fn=join,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _mount(*argv: str) -> None:
    subprocess.run(["mount", *argv], check=True, capture_output=True)


def _reachable_python(scratch: Path) -> list[str]:
    """The test's Python may live under a 0700 home (/root/.pyenv): keep its path but
    make the way to it traversable, with a tmpfs over the closed folder. Returns the
    mounts to undo, last first."""
    path = Path(os.path.realpath(sys.executable))
    closed = [p for p in path.parents if p != Path("/") and not os.stat(p).st_mode & 0o001]
    if not closed:
        return []
    top = closed[-1]
    child = path.relative_to(top).parts[0]
    keep = scratch / "kept"
    keep.mkdir()
    _mount("--bind", str(top / child), str(keep))
    _mount("-t", "tmpfs", "-o", "mode=0755", "kd-vm-open", str(top))
    (top / child).mkdir()
    _mount("--bind", str(keep), str(top / child))
    return [str(top / child), str(top), str(keep)]


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    # Not under pytest's basetemp: that is 0700, and the user must reach its home.
    scratch = Path(tempfile.mkdtemp(prefix="kd-systemd-user-"))
    os.chmod(scratch, 0o755)
    home = scratch / "home"
    runtime = scratch / "run"
    for folder, mode in ((home, 0o755), (runtime, 0o700)):
        folder.mkdir()
        os.chown(folder, UID, UID)
        os.chmod(folder, mode)
    # The user: passwd and group entries, on copies bind-mounted over the read-only ones.
    entries = {"passwd": f"{NAME}:x:{UID}:{UID}::{home}:/bin/sh", "group": f"{NAME}:x:{UID}:"}
    for name, line in entries.items():
        copy = scratch / name
        copy.write_text(Path("/etc", name).read_text() + line + "\n")
        _mount("--bind", str(copy), f"/etc/{name}")
    opened = _reachable_python(scratch)
    # What logind and user@.service set up: a delegated cgroup, memory on the way to it.
    Path("/run/systemd/system").mkdir(parents=True, exist_ok=True)  # "booted with systemd"
    slice_ = ROOT / "user.slice"
    service = slice_ / f"user-{UID}.slice" / f"user@{UID}.service"
    service.mkdir(parents=True)
    for parent in (ROOT, slice_, service.parent):
        (parent / "cgroup.subtree_control").write_text("+memory +pids")
    for path in [service, *service.iterdir()]:
        os.chown(path, UID, UID)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "USER": NAME,
        "LOGNAME": NAME,
        "XDG_RUNTIME_DIR": str(runtime),
        "JUPYTER_DATA_DIR": str(runtime / "jupyter"),
        "IPYTHONDIR": str(home / ".ipython"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": str(home),
    }

    def into_service() -> None:
        (service / "cgroup.procs").write_text(str(os.getpid()))

    drop = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--"]
    with (scratch / "systemd.log").open("w") as log:
        manager = subprocess.Popen(
            [*drop, SYSTEMD, "--user"],
            env=env,
            preexec_fn=into_service,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 180
        state = ""
        while state not in ("running", "degraded"):
            assert manager.poll() is None, (scratch / "systemd.log").read_text()
            assert time.monotonic() < deadline, f"the user manager is {state or 'not up'}"
            time.sleep(1)
            if (runtime / "systemd" / "private").exists():
                asked = subprocess.run(
                    [*drop, "systemctl", "--user", "is-system-running"],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                state = asked.stdout.strip()
        # Where the user's own services run (a JupyterLab started as a user service):
        # a cgroup of the user's, holding processes, so no limited child can be made
        # there directly. (A login session's scope belongs to root, and systemd moves
        # a process out of it with the system manager's help: no PID 1 systemd here.)
        caller = service / "app.slice" / "kd-vm-caller.scope"
        caller.mkdir(parents=True, exist_ok=True)
        for path in [caller, *caller.iterdir()]:
            os.chown(path, UID, UID)
        yield User(UID, home, env, caller)
    finally:
        manager.send_signal(signal.SIGTERM)
        try:
            manager.wait(timeout=60)
        except subprocess.TimeoutExpired:
            manager.kill()
            manager.wait()
        remove_cgroup_tree(str(slice_))
        for target in [*opened, "/etc/passwd", "/etc/group"]:
            subprocess.run(["umount", target], check=False, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


def test_run_with_memory_limit_as_a_normal_user_goes_through_systemd_run(user: User) -> None:
    path = make_notebook(
        user.home,
        [
            "cg = open('/proc/self/cgroup').read().split('::')[1].strip()\n"
            "print(cg, open('/sys/fs/cgroup' + cg + '/memory.max').read().strip())",
            "block = bytearray(400 * 1024**2)",  # more than the whole limit: refused
            "print('alive')",
        ],
    )
    # What kernel-doctor asks first (is there a user manager that answers?), by hand.
    started = time.monotonic()
    probe = user.run(["systemd-run", "--user", "--scope", "--quiet", "--", "true"], 120)
    took = time.monotonic() - started
    log = (user.home.parent / "systemd.log").read_text()[-3000:]
    assert probe.returncode == 0, f"{probe.stderr} ({took:.1f} s); the user manager said:\n{log}"
    print(f"systemd-run --user --scope true: {took:.1f} s")
    out, report_path = user.home / "out.ipynb", user.home / "report.json"
    os.chown(path, UID, UID)
    argv = [sys.executable, "-m", "kernel_doctor", "run", str(path), "--memory-limit", "300M"]
    argv += ["-o", str(out), "--report-json", str(report_path), "--allow-errors"]
    argv += ["--start-timeout", "600"]  # a start takes about a minute under TCG
    done = user.run(argv, timeout=900)
    assert report_path.exists(), done.stderr
    report = json.loads(report_path.read_text())
    if os.environ.get("KERNEL_DOCTOR_VM_RESULTS"):
        note_for_the_vm_harness(os.environ["KERNEL_DOCTOR_VM_RESULTS"], done.returncode, report)
    assert done.returncode == 1, done.stderr  # the guard stopped a cell
    # The kernel ran in the scope systemd made, with the limit asked for...
    cells = nbformat.read(str(out), as_version=4).cells
    scope, limit = cells[0].outputs[0].text.split()
    assert scope.startswith(f"/user.slice/user-{UID}.slice/user@{UID}.service/app.slice/run-")
    assert scope.endswith(".scope") and int(limit) == 300 * MiB
    # ...the report found that limit there, and the guard kept the kernel alive in it.
    memory = report["memory"]
    assert memory["limit_bytes"] == 300 * MiB
    assert memory["limit_source"] == f"cgroup v2 memory.max of {ROOT}{scope}"
    assert report["cell"]["index"] == 1 and report["guard"]["layer"] == "allocation"
    assert cells[2].outputs[0].text == "alive\n"
    deadline = time.monotonic() + 30
    while (ROOT / scope.lstrip("/")).exists():  # systemd removes the scope
        assert time.monotonic() < deadline, f"{scope} is still there"
        time.sleep(0.5)
