"""The supervisor on its own: fail-open, kernels without the agent, stderr, and
deaths that took the supervisor along."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

SUPERVISE = [sys.executable, "-m", "kernel_doctor.supervise"]


def env_with(runtime: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, JUPYTER_DATA_DIR=str(runtime))
    env.update(extra)
    return env


def supervise(
    runtime: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the supervisor to the end with ``args`` (options, '--', kernel argv)."""
    return subprocess.run(
        [*SUPERVISE, *args],
        env=env or env_with(runtime),
        capture_output=True,
        text=True,
        timeout=30,
    )


def start_sleeping_kernel(runtime: Path, **popen: Any) -> subprocess.Popen[Any]:
    """A supervised kernel stand-in that sleeps, launched as jupyter_client launches
    kernels (its own session and process group); returns once its session exists."""
    sup = subprocess.Popen(
        [*SUPERVISE, "--", sys.executable, "-c", "import time; time.sleep(60)"],
        env=env_with(runtime),
        start_new_session=True,
        **popen,
    )
    sessions = runtime / "kernel-doctor" / "sessions"
    wait_for(lambda: next(sessions.glob("*/meta.json"), None))
    return sup


def wait_for(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


CRASH_AFTER_A_WHILE = (
    "import os, time; print('kernel ran', flush=True); time.sleep(0.5); os.abort()"
)


def test_unwritable_runtime_dir_still_diagnoses(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    done = supervise(blocker, "--", sys.executable, "-c", CRASH_AFTER_A_WHILE)
    assert done.returncode == -signal.SIGABRT
    assert done.stdout == "kernel ran\n"
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("kernel-doctor: warning: cannot write to the Jupyter data dir (Not")
    assert f"/kernel-doctor-{os.getuid()}/sessions" in lines[0]
    assert any("SIGABRT" in line for line in lines[1:])
    assert lines[-1].startswith(
        f"kernel-doctor: warning: could not write the report to {blocker}/kernel-doctor/reports/"
    )
    assert blocker.read_text() == ""


def test_unwritable_session_dir_runs_the_kernel_plain(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    done = supervise(
        tmp_path,
        "--session",
        str(blocker / "s"),
        "--",
        sys.executable,
        "-c",
        "import os; print(os.getppid())",
    )
    assert done.returncode == 0
    assert done.stdout.strip() == str(os.getpid())  # exec'd in place: no supervisor
    warning = done.stderr.strip().splitlines()
    assert len(warning) == 1
    assert warning[0].startswith("kernel-doctor: cannot write evidence (Not a directory")
    assert warning[0].endswith("starting the kernel unsupervised")


def test_full_disk_kernel_runs_and_diagnosis_reaches_stderr(full_disk: Path) -> None:
    from jupyter_client.manager import KernelManager

    from kernel_doctor.launch import supervisor_command

    class Supervised(KernelManager):
        def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
            return [*supervisor_command(), *super().format_kernel_cmd(extra_arguments)]

    old = os.environ["JUPYTER_DATA_DIR"]
    os.environ["JUPYTER_DATA_DIR"] = str(full_disk)
    stderr = open(full_disk.parent.parent / "stderr.txt", "w+")  # noqa: SIM115
    km = Supervised(kernel_name="python3", connection_file=str(full_disk.parent.parent / "c.json"))
    try:
        km.start_kernel(stderr=stderr)
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            reply = kc.execute_interactive("x = 6 * 7\nprint(x)", timeout=30)
            assert reply["content"]["status"] == "ok"
            kc.execute("import os\nos.abort()")
            deadline = time.monotonic() + 20
            while km.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            kc.stop_channels()
        assert not km.is_alive()
        km.provisioner.process.wait(10)  # type: ignore[union-attr]
        stderr.seek(0)
        text = stderr.read()
        assert "kernel-doctor: warning: cannot write evidence (No space left on device)" in text
        assert "kernel-doctor: Native crash (SIGABRT)" in text
        assert "could not write the report to" in text
        assert "No space left on device" in text.splitlines()[-1]
        assert not list(full_disk.glob("kernel-doctor/reports/*.json"))
    finally:
        os.environ["JUPYTER_DATA_DIR"] = old
        km.shutdown_kernel(now=True)
        km.cleanup_resources()
        stderr.close()


def test_disabled_runs_plain_without_a_word(tmp_path: Path) -> None:
    done = supervise(
        tmp_path,
        "--",
        sys.executable,
        "-c",
        "import os; print(os.getppid())",
        env=env_with(tmp_path, KERNEL_DOCTOR_DISABLE="1"),
    )
    assert done.returncode == 0 and done.stderr == ""
    assert not (tmp_path / "kernel-doctor").exists()


def test_broken_install_runs_the_kernel_plain(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['kernel_doctor.supervisor.process'] = None\n"
        "from kernel_doctor.supervise import main\n"
        f"sys.exit(main(['--', {sys.executable!r}, '-c', 'print(42)']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env_with(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert done.stdout == "42\n"
    assert "cannot load the supervisor" in done.stderr
    assert "starting the kernel unsupervised" in done.stderr


def test_bad_supervisor_arguments(tmp_path: Path) -> None:
    done = supervise(tmp_path, "--bogus", "x")
    assert done.returncode == 2
    assert done.stderr.startswith("kernel-doctor: no '--' before the kernel's command line")


def test_kernel_without_agent_crash(tmp_path: Path) -> None:
    session = tmp_path / "session"
    kernel = ["sh", "-c", "echo 'about to crash' >&2; sleep 0.5; kill -SEGV $$"]
    done = supervise(tmp_path, "--session", str(session), "--", *kernel)
    assert done.returncode == -signal.SIGSEGV
    assert "about to crash" in done.stderr  # stderr passes through
    report = json.loads((session / "report.json").read_text())
    assert report["cause"] == "native_crash"
    assert report["signal"] == "SIGSEGV"
    assert report["cell"] is None
    assert "about to crash" in report["stderr_tail"]
    assert report["memory"]["limit_bytes"] and report["memory"]["timeline"]
    assert "Native crash (SIGSEGV)" in done.stderr  # the diagnosis reaches stderr too


def test_kernel_without_agent_failing_at_start(tmp_path: Path) -> None:
    session = tmp_path / "session"
    kernel = ["sh", "-c", "echo 'ImportError: no module named kernelish' >&2; exit 4"]
    done = supervise(tmp_path, "--session", str(session), "--", *kernel)
    assert done.returncode == 4
    report = json.loads((session / "report.json").read_text())
    assert report["cause"] == "startup_failure"
    assert "ImportError: no module named kernelish" in report["summary"]


def test_clean_exit_leaves_nothing(tmp_path: Path) -> None:
    done = supervise(tmp_path, "--", sys.executable, "-c", "pass")
    assert done.returncode == 0 and done.stderr == ""
    root = tmp_path / "kernel-doctor"
    assert list((root / "sessions").iterdir()) == []
    assert not (root / "reports").exists() or list((root / "reports").iterdir()) == []


def test_death_that_took_the_supervisor_is_reported_at_next_start(
    tmp_path: Path, cgroup_parent: str
) -> None:
    cgroup = Path(cgroup_parent, f"recovery-{os.getpid()}")
    cgroup.mkdir()
    (cgroup / "memory.limit_in_bytes").write_text(str(200 * 1024**2))
    sessions = tmp_path / "kernel-doctor" / "sessions"
    go = tmp_path / "go"
    code = (
        "import os, time\n"
        "held = bytearray(170 * 1024**2)\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.01)\n"
        "more = bytearray(100 * 1024**2)\n"
    )
    sup = subprocess.Popen(
        [*SUPERVISE, "--cgroup", str(cgroup), "--", sys.executable, "-c", code],
        env=env_with(tmp_path),
        stderr=subprocess.DEVNULL,
    )
    try:
        meta = wait_for(lambda: next(sessions.glob("*/meta.json"), None))
        kernel_pid = json.loads(meta.read_text())["kernel_pid"]
        # Wait until the supervisor has sampled the kernel holding 170 MB of 200 MB...
        from kernel_doctor.agent.protocol import read_samples

        wait_for(lambda: any(c > 160 * 1024**2 for _, c, _ in read_samples(str(meta.parent))))
        # ...then it freezes, the kernel dies of memory, and the supervisor is killed
        # before it could look: as in a whole-container OOM kill.
        os.kill(sup.pid, signal.SIGSTOP)
        go.write_text("")

        def kernel_dead() -> bool:
            try:
                return Path(f"/proc/{kernel_pid}/stat").read_text().split()[2] in "ZX"
            except OSError:
                return True

        wait_for(kernel_dead)
        os.kill(sup.pid, signal.SIGKILL)
    finally:
        sup.kill()
        sup.wait()
    done = supervise(tmp_path, "--", sys.executable, "-c", "pass")
    assert done.returncode == 0
    reports = list((tmp_path / "kernel-doctor" / "reports").glob("*.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["cause"] == "out_of_memory"
    assert any("supervisor was killed" in fact for fact in report["evidence"])
    assert list(sessions.iterdir()) == []  # the leftover session is consumed
    wait_for(lambda: not (cgroup / "cgroup.procs").read_text().strip())
    cgroup.rmdir()


def test_stale_session_of_a_requested_kill_is_dropped_silently(tmp_path: Path) -> None:
    sessions = tmp_path / "kernel-doctor" / "sessions"
    sup = start_sleeping_kernel(tmp_path)
    try:
        os.killpg(sup.pid, signal.SIGKILL)  # what jupyter_client's restart does
        sup.wait()
    finally:
        if sup.poll() is None:
            sup.kill()
    done = supervise(tmp_path, "--", sys.executable, "-c", "pass")
    assert done.returncode == 0 and done.stderr == ""
    assert list(sessions.iterdir()) == []
    assert not (tmp_path / "kernel-doctor" / "reports").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_kernel_gets_a_higher_oom_score(tmp_path: Path) -> None:
    code = "print(open('/proc/self/oom_score_adj').read().strip())"
    done = supervise(tmp_path, "--", sys.executable, "-c", code)
    own = int(Path("/proc/self/oom_score_adj").read_text())
    assert int(done.stdout) == min(1000, own + 500)


def test_group_sigterm_is_a_requested_shutdown(tmp_path: Path) -> None:
    sup = start_sleeping_kernel(tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        os.killpg(sup.pid, signal.SIGTERM)  # jupyter_client's terminate
        _, err = sup.communicate(timeout=20)
    finally:
        if sup.poll() is None:
            sup.kill()
    assert sup.returncode == -signal.SIGTERM  # the kernel's status, passed on
    assert err == ""  # not a death: no diagnosis
    assert not (tmp_path / "kernel-doctor" / "reports").exists()


def test_unsupported_platform_runs_the_kernel_plain(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from kernel_doctor import supervise

    ran: list[list[str]] = []
    monkeypatch.setattr(sys, "platform", "darwin")  # supervise's sys and os are these
    monkeypatch.setattr(os, "execvp", lambda path, argv: ran.append(argv))
    supervise.main(["--", "python", "-m", "ipykernel_launcher"])
    assert ran == [["python", "-m", "ipykernel_launcher"]]
    assert capsys.readouterr().err == (
        "kernel-doctor: supervision needs Linux (this is darwin); "
        "starting the kernel unsupervised\n"
    )


def test_stderr_tee_never_blocks_the_kernel(tmp_path: Path) -> None:
    # Nobody reads the supervisor's stderr: the kernel must still finish writing 8 MB
    # to its own stderr and exit (the tee drops the oldest of what it cannot pass on).
    code = (
        "import sys\nfor _ in range(8192):\n    sys.stderr.write('x' * 1023 + '\\n')\nprint('done')"
    )
    read_fd, write_fd = os.pipe()
    try:
        sup = subprocess.Popen(
            [*SUPERVISE, "--", sys.executable, "-c", code],
            env=env_with(tmp_path),
            stdout=subprocess.PIPE,
            stderr=write_fd,
        )
        out, _ = sup.communicate(timeout=30)
        assert sup.returncode == 0
        assert out == b"done\n"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_kernel_children_keep_their_stderr_after_the_kernel_exits(tmp_path: Path) -> None:
    alive = tmp_path / "alive"
    kernel = ["sh", "-c", f"( sleep 0.5; echo late >&2; echo yes > {alive} ) & exit 0"]
    sup = subprocess.Popen(
        [*SUPERVISE, "--", *kernel], env=env_with(tmp_path), stderr=subprocess.PIPE
    )
    _, err = sup.communicate(timeout=30)  # EOF only once the child closed its stderr
    assert sup.returncode == 0
    assert b"late" in err  # written after the kernel and the supervisor were gone
    assert alive.read_text() == "yes\n"  # and the child was not killed by SIGPIPE


def test_memory_marks_wake_us_in_a_real_cgroup(tmp_path: Path, cgroup_parent: str) -> None:
    # cgroup v1 usage thresholds (eventfd) and v2 memory.events both end up here.
    import select

    from kernel_doctor.probe.limits import find_memory_source

    cgroup = Path(cgroup_parent, f"marks-{os.getpid()}")
    cgroup.mkdir()
    limit_file = "memory.max" if (cgroup / "memory.max").exists() else "memory.limit_in_bytes"
    (cgroup / limit_file).write_text(str(200 * 1024**2))
    go = tmp_path / "go"
    code = (
        "import os, time\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.01)\n"
        "held = bytearray(120 * 1024**2)\n"
        "time.sleep(30)\n"
    )

    def join() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    child = subprocess.Popen([sys.executable, "-c", code], preexec_fn=join)
    try:
        source = find_memory_source(child.pid)
        assert source.limit.limit_bytes == 200 * 1024**2
        assert source.limit.path == str(cgroup)
        watch = source.watch([100 * 1024**2])
        if watch is None:
            pytest.skip("this kernel offers no memory notifications for the cgroup")
        poller = select.poll()
        poller.register(watch.fd, watch.events)
        assert poller.poll(0) == []  # nothing crossed yet
        go.write_text("")
        assert poller.poll(10_000), "no wake-up when usage crossed the mark"
        counted = source.counted()
        assert counted is not None and counted >= 100 * 1024**2
        source.close()
    finally:
        child.kill()
        child.wait()
        wait_for(lambda: not (cgroup / "cgroup.procs").read_text().strip())
        cgroup.rmdir()
