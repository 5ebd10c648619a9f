"""The supervisor must not change how a healthy kernel behaves.

Every lifecycle case runs twice through a real ``jupyter_client`` KernelManager: on a
plain ipykernel kernelspec and on its supervised twin (the same argv behind
``python -m kernel_doctor.supervise --``). Both runs must see the same thing.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

KERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
SUPERVISE = [sys.executable, "-m", "kernel_doctor.supervise", "--"]
KINDS = ["plain", "supervised"]
STARTUP_TIMEOUT = 60.0
REPLY_TIMEOUT = 30.0
# How long an interrupt may take to turn into a KeyboardInterrupt reply.
INTERRUPT_LATENCY = 5.0
# After the first SIGINT reached the counting cell, how long it keeps counting so
# that a duplicate (the supervisor forwards pid-only signals after 0.1 s) shows up.
DUPLICATE_WINDOW = 0.6

# Counts every SIGINT the kernel takes while it runs; returns via user_expressions.
COUNT_SIGINTS = """\
import signal as _kd_signal, time as _kd_time
_kd_hits = 0
def _kd_count(signum, frame):
    global _kd_hits
    _kd_hits += 1
_kd_previous = _kd_signal.signal(_kd_signal.SIGINT, _kd_count)
try:
    print("armed", flush=True)
    _kd_end = _kd_time.monotonic() + 10
    while _kd_hits == 0 and _kd_time.monotonic() < _kd_end:
        _kd_time.sleep(0.005)
    _kd_end = _kd_time.monotonic() + {window}
    while _kd_time.monotonic() < _kd_end:
        _kd_time.sleep(0.005)
finally:
    _kd_signal.signal(_kd_signal.SIGINT, _kd_previous)
""".replace("{window}", repr(DUPLICATE_WINDOW))

SLEEP_CELL = "import time\nprint('sleeping', flush=True)\ntime.sleep(30)"

# A child of the kernel; the second one ignores SIGINT and SIGTERM, so only SIGKILL
# (sent to the whole process group) ends it.
START_CHILDREN = """\
import signal as _kd_signal, subprocess as _kd_subprocess
def _kd_deaf():
    _kd_signal.signal(_kd_signal.SIGINT, _kd_signal.SIG_IGN)
    _kd_signal.signal(_kd_signal.SIGTERM, _kd_signal.SIG_IGN)
_kd_sleep = _kd_subprocess.Popen(["sleep", "300"])
_kd_deaf_sleep = _kd_subprocess.Popen(["sleep", "300"], preexec_fn=_kd_deaf)
"""


# -- kernels -------------------------------------------------------------------------


def write_kernelspecs(root: Path) -> Path:
    kernels = root / "kernels"
    for name, argv in (("plain", KERNEL_ARGV), ("supervised", SUPERVISE + KERNEL_ARGV)):
        spec_dir = kernels / f"kd-{name}"
        spec_dir.mkdir(parents=True)
        spec = {"argv": argv, "display_name": f"kd {name}", "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return kernels


@dataclass
class Kernel:
    kind: str
    km: KernelManager
    kc: BlockingKernelClient | None = None
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        provisioner = self.km.provisioner
        assert provisioner is not None and provisioner.process is not None
        return provisioner.process

    def connect(self) -> BlockingKernelClient:
        if self.kc is not None:
            self.kc.stop_channels()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        return self.kc

    def tree(self) -> list[psutil.Process]:
        """The launched process and all its descendants, remembered for clean-up."""
        root = psutil.Process(self.process.pid)
        found = [root, *root.children(recursive=True)]
        for proc in found:
            self.seen.setdefault(proc.pid, proc)
        return found

    def kernel_process(self) -> psutil.Process:
        """The ipykernel process itself (the launched one, or the supervisor's child)."""
        for proc in self.tree():
            try:
                cmdline = proc.cmdline()
            except psutil.NoSuchProcess:
                continue
            # The sentinel is a fork of the supervisor: it has the supervisor's argv.
            if "ipykernel_launcher" in cmdline and "kernel_doctor.supervise" not in cmdline:
                return proc
        raise AssertionError("no ipykernel process in the kernel's tree")


@pytest.fixture
def kernelspecs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    kernels = write_kernelspecs(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return kernels


@pytest.fixture
def start_kernel(kernelspecs: Path) -> Iterator[Any]:
    started: list[Kernel] = []

    def start(kind: str) -> Kernel:
        ksm = KernelSpecManager(kernel_dirs=[str(kernelspecs)])
        km = KernelManager(kernel_name=f"kd-{kind}", kernel_spec_manager=ksm)
        assert km.kernel_spec is not None
        assert km.kernel_spec.argv == (SUPERVISE if kind == "supervised" else []) + KERNEL_ARGV
        kernel = Kernel(kind, km)
        started.append(kernel)
        km.start_kernel()
        kernel.connect()
        # The supervisor fails open: make sure the supervised twin really is supervised
        # (ipykernel is the launched process's child), and the plain one plain.
        launched = kernel.process.pid
        ipykernel = kernel.kernel_process()
        if kind == "supervised":
            assert ipykernel.ppid() == launched
            assert "kernel_doctor.supervise" in psutil.Process(launched).cmdline()
        else:
            assert ipykernel.pid == launched
        return kernel

    try:
        yield start
    finally:
        for kernel in started:
            if kernel.kc is not None:
                kernel.kc.stop_channels()
            try:
                if kernel.km.has_kernel:
                    kernel.km.shutdown_kernel(now=True)
            finally:
                # Only processes of this kernel's tree, which this test started.
                for proc in alive(kernel.seen.values()):
                    try:
                        proc.kill()
                    except psutil.NoSuchProcess:
                        pass


def alive(procs: Any) -> list[psutil.Process]:
    """The processes of ``procs`` still running (a zombie has ended: it only waits to
    be reaped by whoever inherited it)."""
    running = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
        except psutil.NoSuchProcess:
            continue
    return running


def wait_gone(procs: Any, timeout: float) -> list[psutil.Process]:
    """Poll until every process in ``procs`` has ended; what is left at the deadline."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        left = alive(procs)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            out.append(f"{proc.pid} {proc.status()} {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            out.append(f"{proc.pid} (gone)")
    return out


# -- messages ------------------------------------------------------------------------


def shell_reply(kc: BlockingKernelClient, msg_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no reply to {msg_id} within {timeout} s"
        try:
            msg = kc.get_shell_msg(timeout=remaining)
        except queue.Empty:
            raise AssertionError(f"no reply to {msg_id} within {timeout} s") from None
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def iopub_until(
    kc: BlockingKernelClient, msg_id: str, done: Any, timeout: float = REPLY_TIMEOUT
) -> list[dict[str, Any]]:
    """IOPub messages whose parent is ``msg_id``, up to and including the first for
    which ``done(msg)`` is true."""
    deadline = time.monotonic() + timeout
    got = []
    while True:
        remaining = deadline - time.monotonic()
        try:
            assert remaining > 0
            msg = kc.get_iopub_msg(timeout=remaining)
        except (AssertionError, queue.Empty):
            raise AssertionError(f"IOPub: nothing more within {timeout} s; got {got}") from None
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        got.append(msg)
        if done(msg):
            return got


def is_idle(msg: dict[str, Any]) -> bool:
    return msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"


def execute(
    kc: BlockingKernelClient, code: str, **expressions: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``code`` to its end: (the execute_reply's content, its IOPub messages)."""
    msg_id = kc.execute(code, allow_stdin=False, user_expressions=expressions)
    messages = iopub_until(kc, msg_id, is_idle)
    return shell_reply(kc, msg_id, REPLY_TIMEOUT)["content"], messages


def expression(reply: dict[str, Any], name: str) -> str:
    result = reply["user_expressions"][name]
    assert result["status"] == "ok", result
    return str(result["data"]["text/plain"])


def summary(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(msg_type, relevant content) of each message; stream chunks joined."""
    out: list[tuple[str, Any]] = []
    for msg in messages:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status":
            out.append((kind, content["execution_state"]))
        elif kind == "execute_input":
            out.append((kind, (content["code"], content["execution_count"])))
        elif kind == "stream":
            if out and out[-1][0] == "stream" and out[-1][1][0] == content["name"]:
                out[-1] = ("stream", (content["name"], out[-1][1][1] + content["text"]))
            else:
                out.append((kind, (content["name"], content["text"])))
        elif kind in ("execute_result", "display_data"):
            out.append((kind, (content["data"], content.get("execution_count"))))
        elif kind == "error":
            out.append((kind, (content["ename"], content["evalue"])))
        else:
            out.append((kind, content))
    return out


def assert_works(kc: BlockingKernelClient) -> None:
    reply, _ = execute(kc, "6 * 7", answer="6 * 7")
    assert reply["status"] == "ok", reply
    assert expression(reply, "answer") == "42"


# -- 1. a healthy cell ---------------------------------------------------------------

SIMPLE_CELL = "print('hi'); 1+1"
SIMPLE_IOPUB = [
    ("status", "busy"),
    ("execute_input", (SIMPLE_CELL, 1)),
    ("stream", ("stdout", "hi\n")),
    ("execute_result", ({"text/plain": "2"}, 1)),
    ("status", "idle"),
]


@pytest.mark.parametrize("kind", KINDS)
def test_execute_iopub_identical(kind: str, start_kernel: Any) -> None:
    kernel = start_kernel(kind)
    assert kernel.kc is not None
    reply, messages = execute(kernel.kc, SIMPLE_CELL)
    assert reply["status"] == "ok"
    assert reply["execution_count"] == 1
    # The same sequence the plain kernel gives (asserted for both kinds).
    assert summary(messages) == SIMPLE_IOPUB


# -- 2./3. interrupts ----------------------------------------------------------------


def interrupt(kernel: Kernel, how: str) -> None:
    if how == "group":
        kernel.km.interrupt_kernel()  # killpg(pgid, SIGINT)
    else:
        os.kill(kernel.process.pid, signal.SIGINT)  # the launched pid only, as VS Code


@pytest.mark.parametrize("how", ["group", "pid"])
@pytest.mark.parametrize("kind", KINDS)
def test_interrupt(kind: str, how: str, start_kernel: Any) -> None:
    kernel = start_kernel(kind)
    kc = kernel.kc
    assert kc is not None
    if how == "group":
        assert os.getpgid(kernel.process.pid) == kernel.process.pid  # a group of its own

    # A running cell becomes a KeyboardInterrupt error, promptly.
    msg_id = kc.execute(SLEEP_CELL, allow_stdin=False)
    iopub_until(kc, msg_id, lambda m: m["msg_type"] == "stream")
    sent = time.monotonic()
    interrupt(kernel, how)
    reply = shell_reply(kc, msg_id, INTERRUPT_LATENCY)
    latency = time.monotonic() - sent
    assert reply["content"]["status"] == "error", reply["content"]
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert latency < INTERRUPT_LATENCY, f"interrupt took {latency:.2f} s"
    errors = iopub_until(kc, msg_id, is_idle)
    assert [m["content"]["ename"] for m in errors if m["msg_type"] == "error"] == [
        "KeyboardInterrupt"
    ]

    # The kernel still works afterwards.
    assert_works(kc)

    # One interrupt reaches the kernel exactly once.
    msg_id = kc.execute(COUNT_SIGINTS, allow_stdin=False, user_expressions={"hits": "_kd_hits"})
    iopub_until(kc, msg_id, lambda m: m["msg_type"] == "stream")
    interrupt(kernel, how)
    reply = shell_reply(kc, msg_id, REPLY_TIMEOUT)["content"]
    iopub_until(kc, msg_id, is_idle)
    assert reply["status"] == "ok", reply
    assert expression(reply, "hits") == "1"
    assert_works(kc)


# -- 4. shutdown ---------------------------------------------------------------------


# What the plain kernel's launched process exits with after shutdown_kernel(now=False).
# With no child it exits 0 by itself. With a child, ipykernel's shutdown keeps
# signalling it for ~14 s (the child, killed by the interrupt jupyter_client sends
# first, stays an unreaped zombie of the kernel), so jupyter_client's 2.5 s grace
# ends and it sends SIGTERM to the group.
SHUTDOWN_STATUS = {"no-child": 0, "child": -signal.SIGTERM}


@pytest.mark.parametrize("children", list(SHUTDOWN_STATUS))
@pytest.mark.parametrize("kind", KINDS)
def test_shutdown(kind: str, children: str, start_kernel: Any) -> None:
    kernel = start_kernel(kind)
    assert kernel.kc is not None
    if children == "child":
        reply, _ = execute(
            kernel.kc,
            "import subprocess\n_kd_child = subprocess.Popen(['sleep', '300'])",
            child="_kd_child.pid",
        )
        assert int(expression(reply, "child")) in [p.pid for p in kernel.tree()]
    tree = kernel.tree()
    launched = kernel.process

    kernel.kc.stop_channels()
    kernel.kc = None
    kernel.km.shutdown_kernel(now=False)

    assert launched.returncode == SHUTDOWN_STATUS[children]
    left = wait_gone(tree, 5.0)
    assert not left, describe(left)


# -- 5. restart ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_restart(kind: str, start_kernel: Any) -> None:
    kernel = start_kernel(kind)
    assert kernel.kc is not None
    execute(kernel.kc, "import subprocess\n_kd_child = subprocess.Popen(['sleep', '300'])")
    old = kernel.tree()
    old_pid = kernel.process.pid

    kernel.km.restart_kernel(now=True)
    kc = kernel.connect()
    assert kernel.process.pid != old_pid
    reply, messages = execute(kc, SIMPLE_CELL)
    assert reply["status"] == "ok"
    assert summary(messages) == SIMPLE_IOPUB  # a fresh kernel: execution_count 1 again
    kernel.tree()

    left = wait_gone(old, 5.0)
    assert not left, describe(left)


# -- 6. kill -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_kill(kind: str, start_kernel: Any) -> None:
    kernel = start_kernel(kind)
    assert kernel.kc is not None
    reply, _ = execute(kernel.kc, START_CHILDREN, sleep="_kd_sleep.pid", deaf="_kd_deaf_sleep.pid")
    children = {int(expression(reply, "sleep")), int(expression(reply, "deaf"))}
    tree = kernel.tree()
    assert children <= {p.pid for p in tree}
    launched = kernel.process

    kernel.kc.stop_channels()
    kernel.kc = None
    kernel.km.shutdown_kernel(now=True)

    assert launched.returncode == -signal.SIGKILL
    left = wait_gone(tree, 5.0)
    assert not left, describe(left)


# -- 7. the supervisor killed alone --------------------------------------------------


PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def reap_within(pids: list[int], timeout: float) -> dict[int, int]:
    """Wait statuses of ``pids`` (orphans this process adopted as a subreaper) that
    end before the deadline."""
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(statuses) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid in statuses:
                continue
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not adopted yet: its parent is still there
                continue
            if done:
                statuses[pid] = status
        time.sleep(0.005)
    return statuses


def test_supervisor_sigkill_takes_kernel_along(start_kernel: Any) -> None:
    kernel = start_kernel("supervised")
    supervisor = psutil.Process(kernel.process.pid)
    ipykernel = kernel.kernel_process()
    assert ipykernel.ppid() == supervisor.pid
    orphans = [p.pid for p in supervisor.children()]  # the kernel and the sentinel
    assert ipykernel.pid in orphans

    # As a subreaper, this process adopts the supervisor's orphans and can see how
    # they died: by SIGKILL from PR_SET_PDEATHSIG at once, not by ipykernel's own
    # parent poller (which notices within a second and exits 1, and which kernels
    # other than ipykernel do not have).
    set_child_subreaper(True)
    try:
        os.kill(supervisor.pid, signal.SIGKILL)
        statuses = reap_within(orphans, 1.0)
    finally:
        set_child_subreaper(False)
        for pid in orphans:  # whatever is left is now ours: end and reap it
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    assert ipykernel.pid in statuses, "the kernel outlived its supervisor by 1 s"
    for pid, status in statuses.items():
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            pid,
            status,
        )
    assert sorted(statuses) == sorted(orphans)


# -- 8. exit status ------------------------------------------------------------------


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import os; os._exit(7)", 7),
        ("import os; os.abort()", -signal.SIGABRT),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", -signal.SIGSEGV),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
    ],
    ids=["exit-7", "abort", "segv", "sigkill"],
)
@pytest.mark.parametrize("disable", ["", "1"], ids=["supervised", "disabled"])
def test_exit_status_is_the_commands(
    code: str, expected: int, disable: str, tmp_path: Path
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime), KERNEL_DOCTOR_DISABLE=disable)
    command = [sys.executable, "-c", code]

    def run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            argv,
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            preexec_fn=_no_core_dumps,
        )

    plain = run(command)
    supervised = run(SUPERVISE + command)
    assert plain.returncode == expected
    assert supervised.returncode == plain.returncode, supervised.stderr.decode(errors="replace")


def test_disable_runs_the_command_in_place(tmp_path: Path) -> None:
    """KERNEL_DOCTOR_DISABLE=1: the supervisor replaces itself with the command (same
    pid, no supervisor left in between); without it the command is its child."""
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path))
    command = [sys.executable, "-c", "import os; print(os.getpid(), os.getppid())"]
    for disable, in_place in (("1", True), ("", False)):
        env["KERNEL_DOCTOR_DISABLE"] = disable
        with subprocess.Popen(SUPERVISE + command, env=env, stdout=subprocess.PIPE) as proc:
            out, _ = proc.communicate(timeout=60)
        pid, ppid = map(int, out.split())
        assert proc.returncode == 0
        if in_place:
            assert pid == proc.pid
        else:
            assert ppid == proc.pid
