"""Real kernels for the tests: kernelspecs (plain and supervised twin), starting them
through ``jupyter_client``, talking to them, and watching their processes end."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

KERNEL_ARGV = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
SUPERVISE = [sys.executable, "-m", "kernel_doctor.supervise", "--"]
# How many times slower than this machine the tests run: the VM set's guest
# (tests/vm/guest.py) sets 10, because under QEMU's TCG a kernel takes 80 s or
# more to start, close to the 60 s a start is allowed here.
SLOWDOWN = float(os.environ.get("KERNEL_DOCTOR_TEST_SLOWDOWN", "1"))
STARTUP_TIMEOUT = 60.0 * SLOWDOWN
REPLY_TIMEOUT = 30.0 * SLOWDOWN
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


def unguardable_fill(mib: int) -> str:
    """One line of a cell that fills ``mib`` MiB in one C call, of shared memory, which
    the memory guard's allocation layer does not count: an OOM death no guard prevents
    (a private ``bytearray`` of that size is refused at once)."""
    return (
        f"import ctypes, mmap; fill = mmap.mmap(-1, {mib} * 1024**2); "
        "ctypes.memset(ctypes.addressof(ctypes.c_char.from_buffer(fill)), 1, len(fill))"
    )


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
        return launched(self.km)

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


class Kernels:
    """Kernels a test starts from ``kernelspecs``; ``close`` ends them and every process
    seen in their trees (only those: processes this test started)."""

    def __init__(self, kernelspecs: Path) -> None:
        self.kernelspecs = kernelspecs
        self.started: list[Kernel] = []

    def start(self, kind: str, **launch: Any) -> Kernel:
        """Start the ``kind`` kernel (``launch`` goes to ``KernelManager.start_kernel``)."""
        ksm = KernelSpecManager(kernel_dirs=[str(self.kernelspecs)])
        km = KernelManager(kernel_name=f"kd-{kind}", kernel_spec_manager=ksm)
        assert km.kernel_spec is not None
        assert km.kernel_spec.argv == (SUPERVISE if kind == "supervised" else []) + KERNEL_ARGV
        kernel = Kernel(kind, km)
        self.started.append(kernel)
        km.start_kernel(**launch)
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

    def close(self) -> None:
        for kernel in self.started:
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


def interrupt(kernel: Kernel, how: str) -> None:
    if how == "group":
        kernel.km.interrupt_kernel()  # killpg(pgid, SIGINT)
    else:
        os.kill(kernel.process.pid, signal.SIGINT)  # the launched pid only, as VS Code


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


def kill_adopted(pids: list[int]) -> None:
    """End and reap whatever of ``pids`` this process adopted as a subreaper."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


# -- messages ------------------------------------------------------------------------


def wait_ready(kc: BlockingKernelClient, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """``kc.wait_for_ready`` for a client without a KernelManager, without its liveness
    test: that one reads one missed heartbeat during a slow start (several kernels
    starting at once on two cores) as "Kernel died before replying to kernel_info"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the kernel's process exited ({proc.returncode})"
        kc.kernel_info()
        try:
            msg = kc.get_shell_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["msg_type"] != "kernel_info_reply":
            continue
        try:  # IOPub connected too (its first messages are lost until it is)
            kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            continue
        while True:  # drain what the kernel_info requests produced
            try:
                kc.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                break
        while True:
            try:
                kc.get_shell_msg(timeout=0.1)
            except queue.Empty:
                return
    raise AssertionError(f"no kernel_info_reply within {timeout} s")


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


def launched(km: KernelManager) -> subprocess.Popen[bytes]:
    """The process jupyter_client's LocalProvisioner launched for ``km``."""
    provisioner = km.provisioner
    assert isinstance(provisioner, LocalProvisioner) and provisioner.process is not None
    return cast("subprocess.Popen[bytes]", provisioner.process)


def iopub_until(
    kc: BlockingKernelClient, msg_id: str, done: Any, timeout: float = REPLY_TIMEOUT
) -> list[dict[str, Any]]:
    """IOPub messages whose parent is ``msg_id``, up to and including the first for
    which ``done(msg)`` is true."""
    deadline = time.monotonic() + timeout
    got: list[dict[str, Any]] = []
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
    return bool(msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle")


def is_stream(msg: dict[str, Any]) -> bool:
    return bool(msg["msg_type"] == "stream")


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


def assert_works(kc: BlockingKernelClient) -> None:
    reply, _ = execute(kc, "6 * 7", answer="6 * 7")
    assert reply["status"] == "ok", reply
    assert expression(reply, "answer") == "42"


def count_sigints(kernel: Kernel, how: str) -> int:
    """Interrupt the counting cell once (``how``: "group" or "pid"); how many SIGINTs
    the kernel took."""
    kc = kernel.kc
    assert kc is not None
    msg_id = kc.execute(COUNT_SIGINTS, allow_stdin=False, user_expressions={"hits": "_kd_hits"})
    iopub_until(kc, msg_id, is_stream)
    interrupt(kernel, how)
    reply = shell_reply(kc, msg_id, REPLY_TIMEOUT)["content"]
    iopub_until(kc, msg_id, is_idle)
    assert reply["status"] == "ok", reply
    return int(expression(reply, "hits"))


@contextlib.contextmanager
def kernel_in_cgroup(
    kernels_dir: Path, limit: int, preexec_fn: Any = None
) -> Iterator[BlockingKernelClient]:
    """A supervised ipykernel in a memory cgroup of its own (``limit`` bytes), started
    through a KernelManager from a kernelspec written under ``kernels_dir``; skips
    where no cgroup can be made. The kernel, its processes and the cgroup are gone
    afterwards, whatever happened."""
    import pytest

    from conftest import remove_cgroup_tree
    from kernel_doctor._errors import CgroupUnavailable
    from kernel_doctor.probe.create import make_limited_cgroup

    try:
        cgroup = make_limited_cgroup(limit)
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup: {exc}")
    if cgroup.path is None:
        pytest.skip("memory cgroups only through systemd-run here; --cgroup needs a directory")
    spec = kernels_dir / "kd-limited"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "kernel_doctor.supervise", "--cgroup", cgroup.path, "--"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv + KERNEL_ARGV, "display_name": "kd", "language": "python"})
    )
    ksm = KernelSpecManager(kernel_dirs=[str(kernels_dir)])
    km = KernelManager(kernel_name="kd-limited", kernel_spec_manager=ksm)
    seen: list[psutil.Process] = []
    try:
        km.start_kernel(**({"preexec_fn": preexec_fn} if preexec_fn else {}))
        launched = psutil.Process(km.provisioner.process.pid)  # type: ignore[union-attr]
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        seen.extend([launched, *launched.children(recursive=True)])
        try:
            yield kc
        finally:
            kc.stop_channels()
    finally:
        with contextlib.suppress(Exception):
            km.shutdown_kernel(now=True)
        for proc in alive(seen):  # only what this helper started
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        remove_cgroup_tree(cgroup.path)
