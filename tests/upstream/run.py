"""jupyter_client's and nbclient's own test suites, plain and with every kernel under the
supervisor: ``python tests/upstream/run.py [--sdists DIR] [--suite NAME]… [-- PYTEST ARGS]``.

The supervisor must not change how a healthy kernel behaves (interrupts, shutdown,
restart, exit status, signals, kernel_info), and these suites check exactly that of a
kernel. Each suite runs twice from its sdist, in a virtual environment over this one
(``--system-site-packages``) that adds only what its tests import: plain, then with
``-p supervised`` (``pythonpath/``), which puts the supervisor in front of every kernel
jupyter_client's ``LocalProvisioner`` launches. Every test that passes plain must pass
supervised (``RERUNS`` says how an intermittent failure is told apart), and no more
kernels may outlive pytest than outlive it plain; the exit status is 1 if either is
not so, or if the supervised run wrapped no launch at all, else 0.

The sdists are fetched with pip (``SUITES`` pins the versions) unless ``--sdists``
names a folder that holds them, as tarballs or unpacked.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PLUGIN_PATH = Path(__file__).resolve().with_name("pythonpath")
sys.path.insert(0, str(REPO / "tests"))
from junit import read_junit  # noqa: E402

SUITES = {"jupyter_client": "8.10.0", "nbclient": "0.11.0"}
# What each suite's tests import, from its ``test`` extra less coverage, lint and
# Windows-only tools (most is already here, through kernel-doctor's own test extra);
# pytest-timeout for TIMEOUT_S.
REQUIREMENTS = {
    "jupyter_client": ["anyio", "msgpack", "pytest-jupyter[client]>=0.6.2", "pytest-timeout"],
    "nbclient": [
        "flaky",
        "ipywidgets",
        "nbconvert>=7.1.0",
        "pytest-asyncio>=1.3.0",
        "pytest-timeout",
        "testpath",
        "xmltodict",
    ],
}
# Tests left out of both runs, with the reason each cannot pass supervised: the
# difference is the wrapping itself, not a behaviour of the kernel.
DESELECTED: dict[str, list[str]] = {"jupyter_client": [], "nbclient": []}
# Same limit for both runs (nbclient sets none; jupyter_client 100 s per test).
TIMEOUT_S = 300
# A test that passed plain and failed supervised runs again (supervised, alone) up to
# this many times: one that then passes is reported as intermittent, not as a failure.
# jupyter_client's test_start_parallel_process_kernels interrupts a kernel that is
# still starting, which can end it, supervised or not, before its is_alive().
RERUNS = 2
FAILURE_LINES = 40  # of each remaining difference's traceback, in the output
LEFTOVER_WAIT_S = 5.0
LAUNCHES = "KERNEL_DOCTOR_UPSTREAM_LAUNCHES"  # kernel_doctor_upstream.LAUNCHES


@dataclass
class Outcome:
    seconds: float
    status: int
    results: dict[str, str] = field(default_factory=dict)  # node id -> outcome
    messages: dict[str, str] = field(default_factory=dict)  # node id -> how it failed
    wrapped: str = ""  # the plugin's line: how many launches ran supervised
    leftovers: list[str] = field(default_factory=list)  # processes that outlived pytest

    def count(self, outcome: str) -> int:
        return sum(1 for found in self.results.values() if found == outcome)

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(o)} {o}" for o in ("passed", "failed", "error", "skipped"))
        return f"{counts} in {self.seconds:.0f} s (pytest exit {self.status})"


def fetch(into: Path) -> None:
    pins = [f"{name}=={version}" for name, version in SUITES.items()]
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    subprocess.run([*pip, "--no-binary", ":all:", "--dest", str(into), *pins], check=True)


def unpacked(sdists: Path, name: str, into: Path) -> Path:
    """The suite's unpacked sdist: found in ``sdists``, or unpacked from its tarball."""
    base = f"{name}-{SUITES[name]}"
    for folder in (sdists / base, into / base):
        if (folder / "pyproject.toml").is_file():
            return folder
    tarball = sdists / f"{base}.tar.gz"
    if not tarball.is_file():
        raise SystemExit(f"{base}: neither {tarball} nor the unpacked folder is there")
    with tarfile.open(tarball) as tar:
        tar.extractall(into, filter="data")
    return into / base


def make_env(folder: Path, requirements: list[str]) -> Path:
    """A virtual environment over this one, with ``requirements`` added; its python."""
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(folder)
    python = folder / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements], check=True)
    return python


def run_suite(
    python: Path, source: Path, name: str, run: str, results: Path, args: list[str]
) -> Outcome:
    """One pytest run of the suite; ``run`` names it ("plain", or "supervised" with a
    suffix for a rerun) and says whether the plugin is on."""
    supervised = run.startswith("supervised")
    env = dict(os.environ)
    env.pop(LAUNCHES, None)
    if supervised:  # the plugin's list of the launches it wrapped
        env[LAUNCHES] = str(results / f"{name}-{run}-launches.txt")
    # This tree's kernel-doctor, whatever is installed; the plugin's folder only when on.
    path = [str(REPO / "src")] + ([str(PLUGIN_PATH)] if supervised else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    report = results / f"{name}-{run}.xml"
    cmd = [str(python), "-m", "pytest", "-p", "no:cacheprovider", "--color=no", "-q"]
    cmd += ["--junitxml", str(report), "--timeout", str(TIMEOUT_S)]
    cmd += [f"--deselect={test}" for test in DESELECTED[name]]
    if supervised:
        cmd += ["-p", "supervised"]
    print(f"== {name} {run}: {shlex.join(cmd[1:] + args)}", flush=True)
    started = time.monotonic()
    log = results / f"{name}-{run}.log"
    with open(log, "w") as out:
        status = subprocess.run([*cmd, *args], cwd=source, env=env, stdout=out, stderr=out)
    outcome = Outcome(time.monotonic() - started, status.returncode)
    outcome.leftovers = leftovers(python)
    text = log.read_text(errors="replace")
    found = re.search(r"^kernel-doctor: .*under the supervisor.*$", text, re.M)
    outcome.wrapped = found.group(0) if found else ""
    if report.is_file():
        junit_results(report, source, outcome)
    print(f"   {name} {run}: {outcome.summary()}", flush=True)
    if outcome.wrapped:
        print(f"   {outcome.wrapped}", flush=True)
    for process in outcome.leftovers:
        print(f"   {name} {run}: outlived pytest (killed now): {process}", flush=True)
    return outcome


def leftovers(python: Path) -> list[str]:
    """The processes of the run that outlived pytest, after LEFTOVER_WAIT_S (a kernel
    whose launcher is gone ends within about a second): those in a session that a
    process of this venv's python leads (a kernel or supervisor, its sentinel, the
    kernel's children). Each is killed, so that it cannot disturb the next run."""
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while True:
        found = _processes_of(str(python))
        if not found or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    for pid in found:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return [f"{pid} {command}" for pid, command in sorted(found.items())]


def _processes_of(python: str) -> dict[int, str]:
    commands: dict[int, str] = {}
    sessions: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if not argv or not argv[0]:
            continue  # a zombie, or a kernel thread
        commands[int(entry)] = shlex.join(filter(None, argv))
        sessions[int(entry)] = int(stat.rsplit(")", 1)[1].split()[3])
    # Sessions that a process of this python leads: a launched kernel (or supervisor)
    # leads its own (jupyter_client starts it with start_new_session).
    led = {
        pid
        for pid, command in commands.items()
        if sessions[pid] == pid and command.startswith(python + " ")
    }
    return {
        pid: f"(session {sessions[pid]}) {commands[pid]}"
        for pid in commands
        if sessions[pid] in led
    }


def junit_results(report: Path, source: Path, outcome: Outcome) -> None:
    for case in read_junit(report, source):
        # A test that failed and then errored in teardown has two entries: keep the worse.
        if outcome.results.get(case.test) in (None, "passed", "skipped"):
            outcome.results[case.test] = case.outcome
            if case.outcome in ("failed", "error"):
                outcome.messages[case.test] = case.details or case.message


def differences(plain: Outcome, supervised: Outcome) -> list[str]:
    """Tests that passed plain and did not pass supervised."""
    return [
        test
        for test, outcome in sorted(plain.results.items())
        if outcome == "passed" and supervised.results.get(test) != "passed"
    ]


def compare(
    python: Path, source: Path, name: str, work: Path, plain: Outcome, supervised: Outcome
) -> bool:
    """Report each test that passed plain and not supervised; True if one still does
    not pass supervised after RERUNS reruns of those alone."""
    different = differences(plain, supervised)
    for test in different:
        outcome = supervised.results.get(test, "missing")
        print(f"!! {name}: {test}: passed plain, {outcome} supervised", flush=True)
    for rerun in range(1, RERUNS + 1):
        if not different:
            break
        again = run_suite(python, source, name, f"supervised-rerun{rerun}", work, different)
        for test in different:
            if again.results.get(test) == "passed":
                print(f"   {name}: {test}: passed supervised on rerun {rerun} (intermittent)")
        different = [test for test in different if again.results.get(test) != "passed"]
    for test in different:
        print(f"!! {name}: {test}: fails supervised, passes plain", flush=True)
        for line in supervised.messages.get(test, "").strip().splitlines()[-FAILURE_LINES:]:
            print(f"   | {line}")
    # A kernel left running once pytest is gone: as many sessions as plain, at most.
    left = [len({line.split(")")[0] for line in o.leftovers}) for o in (plain, supervised)]
    if left[1] > left[0]:
        print(f"!! {name}: {left[1]} kernels outlived the supervised run, {left[0]} the plain")
    return bool(different) or left[1] > left[0]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdists", type=Path, help="a folder holding the sdists (else pip)")
    parser.add_argument("--suite", action="append", choices=sorted(SUITES))
    parser.add_argument("--supervised-only", action="store_true", help="skip the plain runs")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("pytest_args", nargs="*", help="after --: for both runs of each suite")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="kernel-doctor-upstream-"))
    failed = False
    try:
        sdists = args.sdists
        if sdists is None:
            sdists = work / "sdists"
            fetch(sdists)
        for name in args.suite or list(SUITES):
            source = unpacked(sdists.resolve(), name, work)
            started = time.monotonic()
            python = make_env(work / f"venv-{name}", REQUIREMENTS[name])
            print(f"== {name}: environment in {time.monotonic() - started:.0f} s", flush=True)
            plain = None
            if not args.supervised_only:
                plain = run_suite(python, source, name, "plain", work, args.pytest_args)
            supervised = run_suite(python, source, name, "supervised", work, args.pytest_args)
            if not supervised.wrapped or "no kernel launch" in supervised.wrapped:
                print(f"!! {name}: no kernel launch ran under the supervisor", flush=True)
                failed = True
            if plain is not None:
                failed = compare(python, source, name, work, plain, supervised) or failed
            elif supervised.status != 0:
                failed = True
    finally:
        if args.keep:
            print(f"== the runs' logs and reports are in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
