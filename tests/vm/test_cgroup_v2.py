"""cgroup v2 for real: run inside the VM guest (tests/vm/run.py), where /sys/fs/cgroup
is a pure v2 hierarchy with the memory controller. Elsewhere every test skips.

The kernel-free cases (limit discovery, the OOM counter) take seconds; the one with a
kernel takes about a minute under TCG.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from conftest import note_for_the_vm_harness, remove_cgroup_tree, run_cli
from test_supervisor import wait_for

MiB = 1024**2
ROOT = "/sys/fs/cgroup"


def _why_not_v2() -> str | None:
    if not os.path.exists(os.path.join(ROOT, "cgroup.controllers")):
        return f"{ROOT} is not a cgroup v2 mount (the VM guest of tests/vm/run.py is)"
    controllers = Path(ROOT, "cgroup.controllers").read_text().split()
    if "memory" not in controllers:
        return f"cgroup v2 at {ROOT} has no memory controller"
    if os.geteuid() != 0:
        return "making cgroups directly needs root"
    return None


pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(_why_not_v2() is not None, reason=str(_why_not_v2())),
]

PROBE = (
    "import json\n"
    "from kernel_doctor.probe.limits import find_memory_source\n"
    "s = find_memory_source()\n"
    "print(json.dumps([s.limit.limit_bytes, s.limit.kind, s.limit.source, s.counted(),"
    " s.oom_kills()]))\n"
)


def write(path: Path, value: str) -> None:
    path.write_text(value)


@pytest.fixture
def limited(cgroup_parent: str) -> Iterator[Path]:
    """A cgroup under the session's parent, memory controller on for its children."""
    # A controller is offered to a cgroup's children only where its parent offers it
    # to it (ENOENT otherwise): the session's parent first, then this one.
    write(Path(cgroup_parent, "cgroup.subtree_control"), "+memory")
    path = Path(cgroup_parent, f"v2-{os.getpid()}")
    path.mkdir()
    try:
        write(path / "cgroup.subtree_control", "+memory")
        yield path
    finally:
        remove_cgroup_tree(str(path))


def run_in(cgroup: Path, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``argv`` started inside ``cgroup`` (it joins before it execs)."""

    def join() -> None:
        with open(cgroup / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    return subprocess.run(
        argv, preexec_fn=join, capture_output=True, text=True, timeout=120, **kwargs
    )


def test_limit_of_an_ancestor_is_found_through_memory_max(limited: Path) -> None:
    write(limited / "memory.max", str(200 * MiB))
    leaf = limited / "leaf"
    leaf.mkdir()
    write(leaf / "memory.max", str(500 * MiB))  # looser than its parent's
    done = run_in(leaf, [sys.executable, "-c", PROBE])
    assert done.returncode == 0, done.stderr
    limit, kind, source, counted, oom_kills = json.loads(done.stdout)
    assert (limit, kind) == (200 * MiB, "cgroup-v2")
    assert source == f"cgroup v2 memory.max of {limited}"
    assert 1 * MiB < counted < 200 * MiB  # a Python process, counted in its parent
    assert oom_kills == 0


def test_limit_inside_a_cgroup_namespace_as_a_pod_sees_it(limited: Path) -> None:
    # What a Kubernetes container sees: its own cgroup as the root of a private
    # namespace, /sys/fs/cgroup remounted there, /proc/self/cgroup saying "0::/".
    pod = limited / "pod"
    pod.mkdir()
    write(pod / "memory.max", str(150 * MiB))
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here (util-linux)")
    # The host's cgroup2 mount stays in the new mount namespace: detach it, then mount
    # the hierarchy as the new cgroup namespace sees it, as a pod's runtime does.
    script = (
        f"umount -l {ROOT} && mount -t cgroup2 none {ROOT} && cat /proc/self/cgroup >&2"
        ' && exec "$0" -c "$1"'
    )
    argv = ["unshare", "--cgroup", "--mount", "sh", "-c", script, sys.executable, PROBE]
    done = run_in(pod, argv)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "0::/"
    limit, kind, source, _, oom_kills = json.loads(done.stdout)
    assert (limit, kind, source) == (150 * MiB, "cgroup-v2", f"cgroup v2 memory.max of {ROOT}")
    assert oom_kills == 0


def test_an_oom_kill_is_counted_in_memory_events(limited: Path) -> None:
    from kernel_doctor.probe.cgroup import CgroupV2
    from kernel_doctor.probe.limits import MemoryLimit

    box = limited / "box"
    box.mkdir()
    write(box / "memory.max", str(64 * MiB))
    write(box / "memory.swap.max", "0")
    source = CgroupV2(str(box), MemoryLimit(64 * MiB, "cgroup-v2", "test", str(box)))
    assert source.oom_kills() == 0
    done = run_in(box, [sys.executable, "-c", "b = bytearray(256 * 1024**2)"])
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert source.oom_kills() == 1
    peak = source.peak()
    assert peak is None or peak >= 60 * MiB  # memory.peak is there from Linux 5.19


def test_run_with_memory_limit_makes_uses_and_removes_a_v2_cgroup(
    notebook: Any, tmp_path: Path, cgroup_parent: str
) -> None:
    path = notebook(["x = 1", "print(open('/proc/self/cgroup').read().strip())"])
    out = tmp_path / "out.ipynb"
    code, report = run_cli(
        ["run", str(path), "--memory-limit", "400M", "-o", str(out)], tmp_path / "report.json"
    )
    assert report is not None
    assert code == 0, report["summary"]
    assert report["outcome"] == "ok"
    memory = report["memory"]
    assert memory["limit_bytes"] == 400 * MiB
    prefix = f"cgroup v2 memory.max of {cgroup_parent}/kernel-doctor-"
    assert memory["limit_source"].startswith(prefix), memory["limit_source"]
    made = memory["limit_source"].split(" of ", 1)[1]
    printed = nbformat.read(str(out), as_version=4).cells[1].outputs[0].text.strip()
    assert printed == "0::" + made[len(ROOT) :]  # the kernel ran in it
    assert not os.path.exists(made)  # and it is gone


def test_an_oom_group_kill_that_takes_the_supervisor_is_reported_at_next_start(
    limited: Path, tmp_path: Path
) -> None:
    # memory.oom.group: the OOM killer ends every process of the cgroup at once, the
    # supervisor with its kernel, so nothing is written at the death. The next
    # supervised start finds the session left behind and reports it.
    box = limited / "group"
    box.mkdir()
    write(box / "memory.max", str(200 * MiB))
    write(box / "memory.swap.max", "0")
    write(box / "memory.oom.group", "1")
    env = dict(os.environ, JUPYTER_DATA_DIR=str(tmp_path))
    sessions = tmp_path / "kernel-doctor" / "sessions"
    go = tmp_path / "go"
    code = (
        "import os, time\n"
        "held = bytearray(150 * 1024**2)\n"
        f"while not os.path.exists({str(go)!r}):\n"
        "    time.sleep(0.05)\n"
        "more = bytearray(100 * 1024**2)\n"
    )
    supervise = [sys.executable, "-m", "kernel_doctor.supervise", "--", sys.executable]

    def join() -> None:
        with open(box / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    sup = subprocess.Popen(
        [*supervise, "-c", code], preexec_fn=join, env=env, stderr=subprocess.DEVNULL
    )
    try:
        meta = wait_for(lambda: next(sessions.glob("*/meta.json"), None), timeout=120)
        from kernel_doctor.agent.protocol import read_samples

        wait_for(
            lambda: any(c > 140 * MiB for _, c, _ in read_samples(str(meta.parent))), timeout=120
        )
        go.write_text("")
        assert sup.wait(timeout=120) == -signal.SIGKILL  # killed with its kernel
    finally:
        sup.kill()
        sup.wait()
    events = (box / "memory.events").read_text()
    assert "oom_group_kill 1" in events, events
    assert [p.name for p in sessions.iterdir()] == [meta.parent.name]  # left behind

    done = subprocess.run(
        [*supervise, "-c", "pass"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    reports = list((tmp_path / "kernel-doctor" / "reports").glob("*.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    if os.environ.get("KERNEL_DOCTOR_VM_RESULTS"):
        note_for_the_vm_harness(os.environ["KERNEL_DOCTOR_VM_RESULTS"], 0, report)
    assert report["cause"] == "out_of_memory"
    assert any("supervisor was killed" in fact for fact in report["evidence"])
    assert report["memory"]["limit_source"] == f"cgroup v2 memory.max of {box}"
    assert list(sessions.iterdir()) == []  # the leftover session is consumed
    wait_for(lambda: not (box / "cgroup.procs").read_text().strip(), timeout=120)
