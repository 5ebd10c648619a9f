"""Supervised kernels over and over, several at once, and with their supervisor killed.

* The soak runs whole lifecycles (start, interrupts both ways, restart, shutdown or
  kill) on the supervised kernelspec through a real ``jupyter_client``
  KernelManager, and checks after each that nothing it started is left running and
  that no death report was written: every end in it was asked for.
* Several supervised kernels crash at the same moment: each gets its own complete
  report, naming its own cell and line.
* The supervisor SIGKILLed alone while the kernel has children of its own.
* Asked-for ends that once got a death report: races and a shared cgroup.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

from kernels import (
    START_CHILDREN,
    STARTUP_TIMEOUT,
    Kernel,
    Kernels,
    alive,
    assert_works,
    count_sigints,
    describe,
    execute,
    expression,
    iopub_until,
    is_stream,
    wait_gone,
    wait_ready,
    write_kernelspecs,
)
from test_reports import DEATH_KEYS

# Each cycle takes 5-10 s on a 2-core machine (a graceful end with children waits for
# jupyter_client's 2.5 s grace, twice); KD_SOAK_CYCLES=50 for a real soak.
SOAK_CYCLES = int(os.environ.get("KD_SOAK_CYCLES", "4"))
# (restart with now=True, end with shutdown_kernel(now=True)): cycles go through all
# four combinations in turn, so the default run has each of them once.
CYCLE_ENDINGS = [(False, False), (True, True), (False, True), (True, False)]
REPORT_ID = re.compile(r"^\d{8}-\d{6}-(\d+)$")
# Every top-level field of a death report (reports/model.py, the documented contract).
REPORT_FIELDS = set(DEATH_KEYS)


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Jupyter data dir of this test's own: its reports dir holds only the reports
    of the kernels this test starts (supervisors and jupyter_client read the env)."""
    path = tmp_path / "runtime"
    path.mkdir()
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(path))
    return path


@pytest.fixture
def kernels(tmp_path: Path, runtime: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernels]:
    specs = write_kernelspecs(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    started = Kernels(specs)
    try:
        yield started
    finally:
        started.close()


def reports_in(runtime: Path) -> list[str]:
    """Everything in the reports dir (temp files of a half-written report included)."""
    directory = runtime / "kernel-doctor" / "reports"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def sessions_in(runtime: Path) -> list[str]:
    directory = runtime / "kernel-doctor" / "sessions"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def diagnosis_lines(path: Path) -> list[str]:
    return [
        line for line in path.read_text(errors="replace").splitlines() if "kernel-doctor:" in line
    ]


def start_children(kernel: Kernel) -> tuple[int, int]:
    """Run START_CHILDREN in the kernel: (the plain sleep's pid, the deaf sleep's pid)."""
    assert kernel.kc is not None
    reply, _ = execute(kernel.kc, START_CHILDREN, sleep="_kd_sleep.pid", deaf="_kd_deaf_sleep.pid")
    assert reply["status"] == "ok", reply
    return int(expression(reply, "sleep")), int(expression(reply, "deaf"))


def supervised_tree(kernel: Kernel, children: tuple[int, int]) -> list[psutil.Process]:
    """Supervisor, sentinel, kernel and the kernel's two children, all remembered in
    ``kernel.seen``; checks that this is the whole tree."""
    tree = kernel.tree()
    supervisor = kernel.process.pid
    ipykernel = kernel.kernel_process()
    sentinels = [p for p in tree if p.ppid() == supervisor and p.pid != ipykernel.pid]
    assert len(sentinels) == 1, describe(tree)
    assert "kernel_doctor.supervise" in sentinels[0].cmdline()
    assert {p.pid for p in tree} == {supervisor, sentinels[0].pid, ipykernel.pid, *children}, (
        describe(tree)
    )
    return tree


def blocked_in(supervisor: int) -> str | None:
    """The syscall number ``supervisor`` is blocked in ("running" while it runs),
    or None where /proc/PID/syscall cannot be read."""
    try:
        return Path(f"/proc/{supervisor}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return None


@contextlib.contextmanager
def setting_up() -> Iterator[None]:
    """A failed step before the one under test says so (set-up, not the case itself)."""
    try:
        yield
    except AssertionError as exc:
        pytest.fail(f"set-up failed: {exc}")


# -- 1. the soak ---------------------------------------------------------------------


def soak_cycle(
    kernels: Kernels, runtime: Path, stderr: Path, restart_now: bool, kill: bool
) -> None:
    """One lifecycle; what it started must be gone after, and no report written."""
    with open(stderr, "wb") as err:
        # restart_kernel starts the new supervisor with the same arguments: same file.
        kernel = kernels.start("supervised", stderr=err)
        first_children = start_children(kernel)
        first = supervised_tree(kernel, first_children)
        first_supervisor = kernel.process

        for how in ("group", "pid"):
            assert count_sigints(kernel, how) == 1, f"{how}-wide interrupt"
            assert kernel.process is first_supervisor and first_supervisor.poll() is None
            assert kernel.kc is not None
            assert_works(kernel.kc)

        kernel.km.restart_kernel(now=restart_now)
        kc = kernel.connect()
        assert kernel.process.pid != first_supervisor.pid
        # The supervisor ends as its kernel did: killed with the group, or by the
        # SIGTERM jupyter_client sends to the group when the kernel (busy signalling
        # its children) has not exited within the 2.5 s grace.
        assert first_supervisor.returncode in (
            (-signal.SIGKILL,) if restart_now else (0, -signal.SIGTERM)
        )
        assert_works(kc)
        second_children = start_children(kernel)
        second = supervised_tree(kernel, second_children)
        second_supervisor = kernel.process

        kc.stop_channels()
        kernel.kc = None
        kernel.km.shutdown_kernel(now=kill)
        assert second_supervisor.returncode in (
            (-signal.SIGKILL,) if kill else (0, -signal.SIGTERM)
        )

    # A child that ignores SIGINT and SIGTERM outlives a graceful end: ipykernel's own
    # shutdown would SIGKILL it later, but jupyter_client's group SIGTERM ends the
    # kernel first. The plain kernel leaves it behind just the same; only a kill
    # (SIGKILL to the group) ends it.
    may_survive = set()
    if not restart_now:
        may_survive.add(first_children[1])
    if not kill:
        may_survive.add(second_children[1])
    left = wait_gone(first + second, 5.0)
    assert {p.pid for p in left} <= may_survive, describe(left)
    for proc in left:  # only the deaf sleeps this cycle started
        proc.kill()
    assert not wait_gone(left, 5.0), describe(left)

    # Every end was asked for: no report, and no diagnosis on the supervisor's stderr.
    assert reports_in(runtime) == []
    assert diagnosis_lines(stderr) == []
    # A killed supervisor cannot remove its session; the next supervised start
    # recovers it (the first kernel's, after a restart with now=True, or the last
    # cycle's) and finds no death in it. The others remove their own.
    leftover = [
        name for name in sessions_in(runtime) if name.startswith(f"{second_supervisor.pid}-")
    ]
    assert sessions_in(runtime) == (leftover if kill else [])
    assert len(leftover) == (1 if kill else 0)


@pytest.mark.timeout(60 + 30 * SOAK_CYCLES)
def test_soak(kernels: Kernels, runtime: Path, tmp_path: Path) -> None:
    for cycle in range(SOAK_CYCLES):
        restart_now, kill = CYCLE_ENDINGS[cycle % len(CYCLE_ENDINGS)]
        try:
            soak_cycle(kernels, runtime, tmp_path / f"stderr-{cycle}.log", restart_now, kill)
        except AssertionError as exc:
            ending = f"restart(now={restart_now}), shutdown(now={kill})"
            raise AssertionError(f"cycle {cycle} [{ending}]: {exc}") from exc


# -- 2. several kernels dying at the same moment -------------------------------------

# Each kernel waits in its cell for the barrier file, which holds the moment (epoch
# seconds) all of them crash at.
CRASH_CELL = """\
{imports}
import pathlib as _kd_pathlib, time as _kd_time
_kd_kernel = {index}
_kd_go = _kd_pathlib.Path({barrier!r})
print("armed", flush=True)
while not _kd_go.exists():
    _kd_time.sleep(0.002)
_kd_at = float(_kd_go.read_text())
while _kd_time.time() < _kd_at:
    _kd_time.sleep(0.0005)
{crash}
"""
# (signal, imports, the crashing line)
CRASHES = [
    ("SIGSEGV", "import os, signal", "os.kill(os.getpid(), signal.SIGSEGV)"),
    ("SIGABRT", "import os", "os.abort()"),
    ("SIGSEGV", "import ctypes", "ctypes.string_at(0)"),
    ("SIGBUS", "import os, signal", "os.kill(os.getpid(), signal.SIGBUS)"),
]


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.mark.timeout(120)
def test_simultaneous_crashes(runtime: Path, tmp_path: Path) -> None:
    barrier = tmp_path / "go"
    launched: list[subprocess.Popen[bytes]] = []
    clients: list[BlockingKernelClient] = []
    seen: list[psutil.Process] = []
    kernel_pids: list[int] = []
    cells: list[str] = []
    sessions = [tmp_path / f"session-{i}" for i in range(len(CRASHES))]
    connection_files = [tmp_path / f"kernel-{i}.json" for i in range(len(CRASHES))]
    stderrs = [tmp_path / f"stderr-{i}.log" for i in range(len(CRASHES))]
    # A Unix socket path holds at most 107 bytes, and CI's tmp_path can be long.
    ipc_dir = Path(tempfile.mkdtemp(prefix="kd-ipc-", dir="/tmp"))
    try:
        for i in range(len(CRASHES)):
            # IPC sockets: four kernels picking TCP ports at once can collide.
            write_connection_file(
                str(connection_files[i]),
                transport="ipc",
                ip=str(ipc_dir / str(i)),
                key=os.urandom(16).hex().encode(),
            )
            with open(stderrs[i], "wb") as err:
                # As jupyter_client launches a kernel: a session (and group) of its own.
                launched.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "kernel_doctor.supervise",
                            "--session",
                            str(sessions[i]),
                            "--",
                            sys.executable,
                            "-m",
                            "ipykernel_launcher",
                            "-f",
                            str(connection_files[i]),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        start_new_session=True,
                        preexec_fn=_no_core_dumps,
                    )
                )
        for i, proc in enumerate(launched):
            kc = BlockingKernelClient(connection_file=str(connection_files[i]))
            kc.load_connection_file()
            clients.append(kc)
            kc.start_channels(hb=False)
            try:
                wait_ready(kc, proc, STARTUP_TIMEOUT)
            except AssertionError as error:
                log = stderrs[i].read_text(errors="replace")[-3000:]
                raise AssertionError(f"kernel {i} did not start: {error}\n{log}") from error
            supervisor = psutil.Process(proc.pid)
            tree = [supervisor, *supervisor.children(recursive=True)]
            seen.extend(tree)
            ipykernel = [
                p
                for p in supervisor.children()
                if "ipykernel_launcher" in p.cmdline()
                and "kernel_doctor.supervise" not in p.cmdline()
            ]
            assert len(ipykernel) == 1, describe(tree)  # supervised, not run plain
            kernel_pids.append(ipykernel[0].pid)
            reply, _ = execute(kc, "_kd_warm = 1")
            assert reply["status"] == "ok" and reply["execution_count"] == 1, reply

        for i, (_, imports, crash) in enumerate(CRASHES):
            cells.append(
                CRASH_CELL.format(imports=imports, index=i, barrier=str(barrier), crash=crash)
            )
            msg_id = clients[i].execute(cells[i], allow_stdin=False)
            iopub_until(clients[i], msg_id, is_stream)  # "armed": waiting at the barrier
        ready = barrier.with_suffix(".tmp")
        ready.write_text(repr(time.time() + 0.3))
        os.replace(ready, barrier)

        for proc, (name, _, _) in zip(launched, CRASHES, strict=True):
            # The supervisor ends as its kernel did: by the same signal.
            assert proc.wait(timeout=60) == -signal.Signals[name], name
    finally:
        for kc in clients:
            kc.stop_channels()
        for proc in launched:
            if proc.poll() is None:
                proc.kill()  # a supervisor this test started
                proc.wait()
        for leftover in alive(seen):
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        shutil.rmtree(ipc_dir, ignore_errors=True)

    assert not wait_gone(seen, 5.0), describe(alive(seen))

    # Exactly one stored report per kernel, distinct ids, none half-written.
    stored = reports_in(runtime)
    assert len(stored) == len(CRASHES), stored
    reports = []
    for i, (name, _, _) in enumerate(CRASHES):
        report = json.loads((sessions[i] / "report.json").read_text())
        reports.append(report)
        assert f"{report['id']}.json" in stored
        copy = runtime / "kernel-doctor" / "reports" / f"{report['id']}.json"
        assert json.loads(copy.read_text()) == report

        # Complete, and about this kernel: its pid, its cell, its line.
        assert set(report) == REPORT_FIELDS, sorted(report)
        match = REPORT_ID.match(report["id"])
        assert match is not None and int(match.group(1)) == kernel_pids[i], report["id"]
        assert report["kernel"]["pid"] == kernel_pids[i]
        assert report["kernel"]["connection_file"] == str(connection_files[i])
        assert report["outcome"] == "kernel_died"
        assert report["cause"] == "native_crash", report["summary"]
        assert report["signal"] == name
        assert report["exit_code"] is None
        assert report["cell"]["execution_count"] == 2
        assert report["cell"]["source"] == cells[i]
        line = cells[i].rstrip("\n").count("\n") + 1
        assert report["line"] == line, (report["summary"], report["stack"])
        assert report["summary"].startswith(f"Native crash ({name}) at In [2], line {line}")
        cell_frames = [(f["line"], f["function"]) for f in report["stack"] if f["execution_count"]]
        assert cell_frames == [(line, "<module>")], report["stack"]
        assert f"the kernel (pid {kernel_pids[i]}) was ended by {name}" in report["evidence"]

        # And the supervisor said so on its own stderr, once.
        said = diagnosis_lines(stderrs[i])
        assert said[0] == f"kernel-doctor: {report['summary']}", said
        assert said.count(f"kernel-doctor: full report: kernel-doctor show {report['id']}") == 1
        assert sum(line.startswith("kernel-doctor: Native crash") for line in said) == 1

    assert len({r["id"] for r in reports}) == len(CRASHES)
    # They really died together (give or take the time their supervisors took to
    # notice: tens of ms here).
    ended = [r["kernel"]["ended"] for r in reports]
    assert max(ended) - min(ended) < 1.0, ended


# -- 3. the supervisor SIGKILLed alone, with the kernel's children -------------------


@pytest.mark.timeout(120)
def test_restart_after_a_supervisor_sigkill_reports_nothing(
    kernels: Kernels, runtime: Path
) -> None:
    """``kill -9`` of the supervisor alone ends the kernel (PR_SET_PDEATHSIG) and,
    through the sentinel, the kernel's own children. jupyter_client's restarter then
    starts a new kernel, which recovers the dead one's session without a report."""
    kernel = kernels.start("supervised")
    children = start_children(kernel)
    tree = supervised_tree(kernel, children)
    supervisor = kernel.process
    assert [n.split("-")[0] for n in sessions_in(runtime)] == [str(supervisor.pid)]

    os.kill(supervisor.pid, signal.SIGKILL)
    left = wait_gone(tree, 1.0)
    assert not left, describe(left)

    # What jupyter_client's restarter does when it finds the kernel dead.
    kernel.km.restart_kernel(now=True)
    kc = kernel.connect()
    assert_works(kc)
    left = wait_gone(tree, 5.0)
    assert not left, describe(left)
    # The new supervisor recovered the dead one's session: not a death (SIGKILL by
    # hand, no OOM kill counted), so no report, and the session is gone.
    deadline = time.monotonic() + 5.0
    while str(supervisor.pid) in [n.split("-")[0] for n in sessions_in(runtime)]:
        assert time.monotonic() < deadline, sessions_in(runtime)
        time.sleep(0.05)
    assert [n.split("-")[0] for n in sessions_in(runtime)] == [str(kernel.process.pid)]
    assert reports_in(runtime) == []


@pytest.mark.timeout(120)
def test_supervisor_sigkill_ends_kernel_children(kernels: Kernels) -> None:
    with setting_up():
        kernel = kernels.start("supervised")
        children = start_children(kernel)
        tree = supervised_tree(kernel, children)
    os.kill(kernel.process.pid, signal.SIGKILL)
    left = wait_gone([p for p in tree if p.pid in children], 1.0)
    assert not left, describe(left)


# -- 4. asked-for ends that still get a report (known bugs) --------------------------


@pytest.mark.timeout(60)
def test_group_sigterm_while_forwarding_a_pid_only_interrupt(
    kernels: Kernels, runtime: Path, tmp_path: Path
) -> None:
    stderr = tmp_path / "stderr.log"
    with setting_up():
        with open(stderr, "wb") as err:
            kernel = kernels.start("supervised", stderr=err)
        supervisor = kernel.process
        deadline = time.monotonic() + 5.0
        idle = blocked_in(supervisor.pid)
        while idle == "running" and time.monotonic() < deadline:  # back in its main loop
            time.sleep(0.01)
            idle = blocked_in(supervisor.pid)

        os.kill(supervisor.pid, signal.SIGINT)  # pid-only, as VS Code interrupts
        # The supervisor now waits up to GROUP_WINDOW (0.1 s) for the sentinel to say
        # whether it saw the SIGINT too; it leaves the poll() of its main loop at once.
        while idle is not None and blocked_in(supervisor.pid) == idle:
            assert time.monotonic() < deadline, "the supervisor did not take the SIGINT"
        time.sleep(0.03 if idle is not None else 0.05)
        kernel.km.signal_kernel(signal.SIGTERM)  # killpg, as jupyter_client terminates
        assert supervisor.wait(timeout=10) == -signal.SIGTERM

    assert diagnosis_lines(stderr) == []
    assert reports_in(runtime) == []


@pytest.mark.timeout(60)
def test_requested_kill_not_blamed_on_a_later_oom_kill(runtime: Path, cgroup_parent: str) -> None:
    from kernel_doctor.probe.create import make_limited_cgroup

    limit = 32 * 1024**2
    with setting_up():
        cgroup = make_limited_cgroup(limit)
        assert cgroup.path is not None
    try:
        sessions = runtime / "kernel-doctor" / "sessions"
        supervise = [sys.executable, "-m", "kernel_doctor.supervise"]
        sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]

        def join_cgroup() -> None:
            with open(os.path.join(str(cgroup.path), "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

        with setting_up():
            supervisor = subprocess.Popen(
                [*supervise, "--cgroup", cgroup.path, "--", *sleeper],
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                deadline = time.monotonic() + 30
                while not list(sessions.glob("*/meta.json")):
                    assert time.monotonic() < deadline, "the supervisor wrote no session"
                    time.sleep(0.02)
                os.killpg(supervisor.pid, signal.SIGKILL)  # jupyter_client's kill: asked for
                assert supervisor.wait(timeout=10) == -signal.SIGKILL
            finally:
                if supervisor.poll() is None:
                    supervisor.kill()
                    supervisor.wait()

            # Later, another process in the same cgroup is OOM-killed (it asks for twice
            # the limit; the cgroup holds it to 32 MiB).
            hog = subprocess.run(
                [sys.executable, "-c", f"x = bytearray({2 * limit})"],
                preexec_fn=join_cgroup,
                capture_output=True,
                timeout=60,
            )
            assert hog.returncode == -signal.SIGKILL, hog.stderr

        # The next supervised start recovers the killed supervisor's session.
        done = subprocess.run(
            [*supervise, "--", sys.executable, "-c", "pass"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        with setting_up():
            assert done.returncode == 0
            assert list(sessions.iterdir()) == []  # the session was recovered
        assert reports_in(runtime) == [], done.stderr
    finally:
        # Like the container's cgroup, it outlives the kernel until the recovery.
        cgroup.remove()
