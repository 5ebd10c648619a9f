"""Run tests inside a real cgroup v2 guest: ``python tests/vm/run.py [pytest args]``.

The guest is this machine's own filesystem booted under another kernel by virtme-ng
(``vng``) with QEMU's TCG emulation (KVM does not run nested guests here): the
repository and the Python environment are visible read-only over 9p, and one results
folder is shared read-write. Inside, ``tests/vm/guest.py`` mounts a tmpfs for
everything that must hold FIFOs or sockets (9p refuses to open them, and the guest
then hangs), runs pytest on the chosen tests and writes its JUnit XML and exit status
to the results folder; this side turns them into ``results.json``.

Without pytest arguments the VM set (``VM_TESTS``) runs. The exit status is pytest's
inside the guest, or ``UNAVAILABLE`` (with the reason on stderr) where QEMU, vng or a
kernel image is missing, or ``GUEST_FAILED`` where the guest never reported back.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUEST = Path(__file__).resolve().with_name("guest.py")
sys.path.insert(0, str(REPO / "tests"))  # run as a script, too
from junit import CaseResult, read_junit  # noqa: E402

UNAVAILABLE = 4  # no QEMU, vng or kernel image: nothing was run
GUEST_FAILED = 5  # the guest did not boot, or hung, or died before pytest reported
# The VM set took 20-26 min here (a kernel start alone is 80 s under TCG): room for a
# CI machine half as fast.
GUEST_TIMEOUT = 2700.0

# What runs in the guest by default: few, because under TCG a kernel start takes 80 s
# (1 s on the host), and tests/kernels.py's waits are stretched tenfold there.
VM_TESTS = [
    "tests/vm/test_cgroup_v2.py",
    "tests/test_deaths.py::test_oom_one_big_allocation",
    "tests/test_deaths.py::test_segfault_main_thread",
    "tests/test_guard.py::test_gradual_growth_is_stopped_and_the_kernel_lives",
    "tests/test_guard_layers.py::test_an_allocation_past_what_the_limit_leaves_is_refused",
    "tests/test_children.py::test_run_reports_a_worker_killed_by_the_oom_killer",
    "tests/test_checkpoints.py::test_variables_come_back_after_an_oom_kill",
    "tests/vm/test_systemd_user.py",
]


@dataclass(frozen=True)
class VmResult:
    exit_status: int
    seconds: float
    cases: list[CaseResult]
    cgroup_reports: list[dict[str, object]]  # what run_cli's reports said, per test
    results_dir: str

    def case(self, test: str) -> CaseResult | None:
        return next((c for c in self.cases if c.test == test), None)


def find_kernel() -> str | None:
    """The newest /boot/vmlinuz-* this user can read (vng needs to read it)."""
    images = [p for p in glob.glob("/boot/vmlinuz-*") if os.access(p, os.R_OK)]
    return max(images, key=_version_key) if images else None


def _version_key(path: str) -> list[int]:
    digits = "".join(c if c.isdigit() else " " for c in path.rsplit("vmlinuz-", 1)[-1])
    return [int(part) for part in digits.split()]


def find_vng() -> str | None:
    beside = Path(sys.executable).with_name("vng")
    return str(beside) if beside.exists() else shutil.which("vng")


def unavailable() -> str | None:
    """Why no guest can be booted here, or None where one can."""
    if sys.platform != "linux":
        return "the VM tests need Linux"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    if find_vng() is None:
        return "virtme-ng's vng is not installed (pip install virtme-ng)"
    if find_kernel() is None:
        return "no readable kernel image in /boot (apt-get install linux-image-amd64)"
    if not glob.glob("/usr/bin/busybox") and shutil.which("busybox") is None:
        return "busybox is not installed (apt-get install busybox-static)"
    return None


def run_in_vm(
    pytest_args: list[str],
    results: Path,
    timeout: float = GUEST_TIMEOUT,
    memory: str = "3G",
    cpus: int = 2,
    echo: bool = True,
) -> VmResult:
    """Boot the guest, run pytest there with ``pytest_args``, and read back its results.

    ``results`` must be an empty folder outside /tmp (the guest puts a tmpfs there).
    Raises ``RuntimeError`` with the reason where the guest cannot be booted.
    """
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    results.mkdir(parents=True, exist_ok=True)
    (results / "args.json").write_text(json.dumps(pytest_args))
    python = os.path.realpath(sys.executable)
    inner = f"{python} {GUEST} {results}"
    argv = [
        find_vng() or "vng",
        "--run",
        find_kernel() or "",
        "--disable-kvm",
        "--memory",
        memory,
        "--cpus",
        str(cpus),
        "--rwdir",
        str(results),
        "--cwd",
        str(REPO),
        "--exec",
        inner,
    ]
    started = time.monotonic()
    # Its own session: on a timeout the whole tree (vng, QEMU) is killed at once.
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=REPO,
    )
    pump = threading.Thread(target=_pump, args=(proc, results / "console.log", echo))
    pump.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    pump.join()
    # The pipe is ours to close; left to the collector, pytest (warnings as errors) fails on it.
    assert proc.stdout is not None
    proc.stdout.close()
    if time.monotonic() - started >= timeout:
        with (results / "console.log").open("a") as log:
            log.write(f"\n[run.py: the guest ran past {timeout:.0f} s and was killed]\n")
    seconds = time.monotonic() - started
    status_file = results / "status"
    try:
        exit_status = int(status_file.read_text())
    except (OSError, ValueError):
        exit_status = GUEST_FAILED
    result = VmResult(
        exit_status=exit_status,
        seconds=round(seconds, 1),
        cases=read_junit(results / "junit.xml", REPO),
        cgroup_reports=_read_jsonl(results / "reports.jsonl"),
        results_dir=str(results),
    )
    (results / "results.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _pump(proc: subprocess.Popen[bytes], path: Path, echo: bool) -> None:
    """The guest's console, to ``path`` and (with ``echo``) to our stdout."""
    assert proc.stdout is not None
    with path.open("w") as log:
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            log.write(line)
            log.flush()
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, help="folder for the results (default: new)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=GUEST_TIMEOUT,
        help=f"seconds (default {GUEST_TIMEOUT:.0f})",
    )
    parser.add_argument("--memory", default="3G", help="guest memory (default 3G)")
    parser.add_argument("--cpus", type=int, default=2, help="guest CPUs (default 2)")
    args, pytest_args = parser.parse_known_args(argv)
    reason = unavailable()
    if reason is not None:
        print(f"run.py: cannot boot a VM: {reason}", file=sys.stderr)
        return UNAVAILABLE
    results = args.results or Path(tempfile.mkdtemp(prefix="kd-vm-", dir="/var/tmp"))
    result = run_in_vm(pytest_args or VM_TESTS, results, args.timeout, args.memory, args.cpus)
    print(f"\nrun.py: exit status {result.exit_status} after {result.seconds:.0f} s")
    for case in result.cases:
        print(f"  {case.outcome:8} {case.seconds:6.1f} s  {case.test}  {case.message}")
    print(f"run.py: results in {results}/results.json")
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
