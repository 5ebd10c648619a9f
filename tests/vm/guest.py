"""Inside the guest (started by ``run.py``): prepare, run pytest, write the status.

``python tests/vm/guest.py RESULTS``: the pytest arguments are in RESULTS/args.json;
JUnit XML, the exit status and the guest's cgroup facts go back to RESULTS, the only
folder the host shares read-write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENV_RESULTS = "KERNEL_DOCTOR_VM_RESULTS"  # tests append their reports' gist here
ENV_IN_VM = "KERNEL_DOCTOR_IN_VM"
ENV_SLOWDOWN = "KERNEL_DOCTOR_TEST_SLOWDOWN"  # tests/kernels.py scales its waits by it
SCRATCH = "/tmp"


def prepare() -> dict[str, str]:
    """A tmpfs for everything that needs FIFOs or sockets, and an environment that
    points there. The shared folders are 9p, which refuses to open special files (QEMU
    logs "9p: broken or compromised client detected" and the guest hangs)."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "kd-vm", SCRATCH], check=True)
    home = Path(SCRATCH, "home")
    home.mkdir()
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        TMPDIR=SCRATCH,
        IPYTHONDIR=str(home / ".ipython"),
        MPLCONFIGDIR=str(home / ".matplotlib"),
        JUPYTER_DATA_DIR=str(home / ".local/share/jupyter"),
        JUPYTER_RUNTIME_DIR=str(home / ".local/share/jupyter/runtime"),
        # shims/: what would only slow the guest down (see each module there).
        PYTHONPATH=os.pathsep.join([str(REPO / "tests/vm/shims"), str(REPO / "src")]),
        # The repository and the environment are read-only here.
        PYTHONDONTWRITEBYTECODE="1",
        HYPOTHESIS_STORAGE_DIRECTORY=str(home / ".hypothesis"),
    )
    return env


def facts() -> dict[str, str]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            return f"unreadable: {exc.strerror}"

    return {
        "kernel": os.uname().release,
        "proc_self_cgroup": read("/proc/self/cgroup"),
        "controllers": read("/sys/fs/cgroup/cgroup.controllers"),
        "subtree_control": read("/sys/fs/cgroup/cgroup.subtree_control"),
        "cpus": str(os.cpu_count()),
        "memtotal": read("/proc/meminfo").splitlines()[0],
    }


def main(results: Path) -> int:
    args = json.loads((results / "args.json").read_text())
    (results / "guest.json").write_text(json.dumps(facts(), indent=2))
    env = prepare()
    env[ENV_RESULTS] = str(results)
    env[ENV_IN_VM] = "1"
    env[ENV_SLOWDOWN] = "10"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        f"--junitxml={results / 'junit.xml'}",
        # A kernel start plus a cell takes about a minute under TCG.
        "-o",
        "timeout=900",
        "-v",
        *args,
    ]
    print("guest.py:", " ".join(argv), flush=True)
    code = subprocess.run(argv, cwd=REPO, env=env, check=False).returncode
    (results / "status").write_text(str(code))
    return code


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
