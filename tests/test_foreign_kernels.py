"""A kernel that is not IPython (bash_kernel) under the supervisor, through a real
``jupyter_client`` KernelManager: no agent, yet its deaths are still diagnosed from
the outside (the wait status, the memory samples, the cgroup's OOM counter)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from conftest import remove_cgroup_tree
from kernel_doctor._errors import CgroupUnavailable
from kernel_doctor.probe.create import make_limited_cgroup
from kernels import STARTUP_TIMEOUT, alive, execute, launched

pytest.importorskip("bash_kernel")

BASH_ARGV = [sys.executable, "-m", "bash_kernel", "-f", "{connection_file}"]
LIMIT = 300 * 1024**2
DEATH_TIMEOUT = 30.0


@dataclass
class BashKernel:
    km: KernelManager
    kc: BlockingKernelClient
    runtime: Path
    process: subprocess.Popen[bytes] = field(init=False)  # the supervisor, kept past shutdown
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def launched(self) -> subprocess.Popen[bytes]:
        """The process jupyter_client launched: the supervisor."""
        return launched(self.km)

    @property
    def supervisor(self) -> psutil.Process:
        return psutil.Process(self.launched.pid)

    def tree(self) -> list[psutil.Process]:
        root = self.supervisor
        found = [root, *root.children(recursive=True)]
        for proc in found:
            self.seen.setdefault(proc.pid, proc)
        return found

    def kernel_process(self) -> psutil.Process:
        """bash_kernel's own Python process: the supervisor's child."""
        for proc in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                cmdline = proc.cmdline()
                if "bash_kernel" in cmdline and "kernel_doctor.supervise" not in cmdline:
                    return proc
        raise AssertionError("no bash_kernel process in the kernel's tree")

    def wait_dead(self) -> int:
        """The supervisor's exit status, once the kernel died."""
        return self.process.wait(timeout=DEATH_TIMEOUT)

    def reports(self) -> list[dict[str, Any]]:
        directory = self.runtime / "kernel-doctor" / "reports"
        found = sorted(directory.glob("*.json")) if directory.is_dir() else []
        return [json.loads(p.read_text()) for p in found]


@pytest.fixture
def bash_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start bash_kernel behind the supervisor (extra supervisor options allowed)."""
    runtime = tmp_path / "runtime"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(runtime))
    started: list[BashKernel] = []

    def start(*options: str) -> BashKernel:
        spec_dir = tmp_path / "kernels" / "bash"
        spec_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "kernel_doctor.supervise", "--kernel-name", "bash"]
        spec = {
            "argv": [*argv, *options, "--", *BASH_ARGV],
            "display_name": "Bash (kernel-doctor)",
            "language": "bash",
            "env": {"PS1": "$"},
        }
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
        km = KernelManager(kernel_name="bash", kernel_spec_manager=ksm)
        km.start_kernel()
        kc = km.client()
        kernel = BashKernel(km, kc, runtime)
        kernel.process = kernel.launched
        started.append(kernel)
        kc.start_channels()
        kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        # Really supervised: bash_kernel is the child of the launched supervisor.
        assert "kernel_doctor.supervise" in kernel.supervisor.cmdline()
        assert kernel.kernel_process().ppid() == kernel.supervisor.pid
        return kernel

    try:
        yield start
    finally:
        for kernel in started:
            kernel.kc.stop_channels()
            try:
                if kernel.km.has_kernel:
                    kernel.km.shutdown_kernel(now=True)
            finally:
                for proc in alive(kernel.seen.values()):  # only what this test started
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.kill()


def output_text(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")


def start_dying(kernel: BashKernel, code: str) -> None:
    """Run a cell that kills the kernel: it never replies."""
    kernel.tree()  # remember every process, for the clean-up
    kernel.kc.execute(code, allow_stdin=False)


def test_healthy_bash_cell_and_shutdown_leave_no_report(bash_kernel: Any) -> None:
    kernel = bash_kernel()
    reply, messages = execute(kernel.kc, "echo hi")
    assert reply["status"] == "ok", reply
    assert output_text(messages) == "hi\n"
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=False)  # shutdown_request, then SIGTERM after 2.5 s
    # bash_kernel sometimes takes ~10 s to exit after its shutdown_reply, supervised or
    # not; jupyter_client then ends it with SIGTERM. Either way the end was asked for.
    assert kernel.wait_dead() in (0, -signal.SIGTERM)
    assert kernel.reports() == []
    # The supervisor removed its session: nothing is left to be "recovered" later.
    sessions = kernel.runtime / "kernel-doctor" / "sessions"
    assert not sessions.exists() or list(sessions.iterdir()) == []


def test_bash_kernel_segfault_is_a_native_crash(bash_kernel: Any) -> None:
    kernel = bash_kernel()
    # pexpect runs bash straight under bash_kernel's Python: $PPID is the kernel.
    reply, messages = execute(kernel.kc, "echo $PPID")
    assert reply["status"] == "ok", reply
    pid = kernel.kernel_process().pid
    assert output_text(messages).strip() == str(pid)

    start_dying(kernel, "kill -SEGV $PPID")
    status = kernel.wait_dead()
    assert status == -11  # the supervisor ends the way its kernel ended

    reports = kernel.reports()
    assert len(reports) == 1, reports
    report = reports[0]
    assert report["outcome"] == "kernel_died"
    assert report["cause"] == "native_crash", report["summary"]
    assert report["signal"] == "SIGSEGV"
    assert report["summary"].startswith("Native crash (SIGSEGV)"), report["summary"]
    assert report["kernel"]["name"] == "bash"
    assert report["kernel"]["pid"] == pid
    assert report["kernel"]["argv"][:3] == BASH_ARGV[:3]
    # No agent in a bash kernel: no cell, no line, but memory was sampled throughout.
    assert report["cell"] is None and report["line"] is None
    assert len(report["memory"]["timeline"]) >= 1
    assert all(bytes_ > 0 for _, bytes_ in report["memory"]["timeline"])


@pytest.fixture
def memory_cgroup(cgroup_parent: str) -> Iterator[str]:
    try:
        cgroup = make_limited_cgroup(LIMIT)
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup: {exc}")
    if cgroup.path is None:
        pytest.skip("memory cgroups only through systemd-run here; --cgroup needs a directory")
    try:
        yield cgroup.path
    finally:
        remove_cgroup_tree(cgroup.path)


# How the kernel, not the cell's commands, becomes the OOM killer's victim. bash's
# children inherit the kernel's oom_score_adj (+500), so one big hog (a `tail -c 600M`)
# outscores the kernel and is killed instead, and the kernel lives. Protecting the hog
# with oom_score_adj -1000 needs CAP_SYS_RESOURCE, which root in a container often
# lacks (then only lowering back to 0 is allowed, and a hog at 0 that fills the rest,
# ~230 MB, scores as high as a 70 MB kernel at +500, which counts 70 MB plus half the
# limit). So the cell runs ten workers in parallel, each holding at most 30 MB (tail
# keeps the last 30 MB of an endless stream): together they fill the cgroup, but each
# scores below the kernel (~70 MB RSS), so the OOM killer picks the kernel, as it
# would for a parallel build in a real notebook. When the kernel dies its pty hangs
# up, and bash and its jobs end with it.
WORKERS = "for i in $(seq 10); do cat /dev/zero | tail -c 30M >/dev/null & done; wait"


def test_bash_kernel_oom_kill_in_a_memory_cgroup(memory_cgroup: str, bash_kernel: Any) -> None:
    kernel = bash_kernel("--cgroup", memory_cgroup)
    pid = kernel.kernel_process().pid
    procs = Path(memory_cgroup, "cgroup.procs").read_text().split()
    assert str(pid) in procs
    assert str(kernel.supervisor.pid) not in procs  # only the kernel joins the cgroup
    reply, messages = execute(kernel.kc, "cat /proc/self/oom_score_adj")
    assert reply["status"] == "ok", reply
    assert output_text(messages).strip() == "500"  # the kernel's, inherited by its commands
    kernel_rss = kernel.kernel_process().memory_info().rss
    assert kernel_rss > 40 * 1024**2  # above every worker's 30 MB: the victim is the kernel

    start_dying(kernel, WORKERS)
    assert kernel.wait_dead() == -9  # the supervisor ends the way its kernel ended

    reports = kernel.reports()
    assert len(reports) == 1, reports
    report = reports[0]
    assert report["outcome"] == "kernel_died"
    assert report["cause"] == "out_of_memory", report["summary"]
    assert report["signal"] == "SIGKILL"
    assert report["kernel"]["name"] == "bash"
    assert report["kernel"]["pid"] == pid
    assert report["cell"] is None and report["line"] is None  # no agent: no cell
    memory = report["memory"]
    assert memory["limit_bytes"] == LIMIT
    assert "cgroup" in memory["limit_source"] and memory_cgroup in memory["limit_source"]
    # The cgroup filled up. (The kernel's own peak counts its process tree, workers
    # included when the tree happened to be sampled during the fill: not asserted.)
    assert memory["peak_bytes"] >= 0.9 * LIMIT, memory
    assert memory["kernel_peak_bytes"] >= 0.5 * kernel_rss, memory
    assert len(memory["timeline"]) >= 2
    assert max(bytes_ for _, bytes_ in memory["timeline"]) >= 0.5 * LIMIT
    assert any("OOM-kill counter went from" in fact for fact in report["evidence"])
    assert report["summary"].startswith("Out of memory: "), report["summary"]
    assert f"of the {LIMIT // 1024**2} MiB" in report["summary"], report["summary"]
