"""How often the memory guard turns a would-be OOM death into a MemoryError (issue 12).

    python benchmarks/guard.py [--limits 512M,2G,4G] [--repeat N] [--quick]
                               [--only WORKLOAD[,WORKLOAD]] [--verify] [--keep]

Runs every workload of ``guard_workloads.py`` under every limit, each case as a
notebook through ``kernel-doctor run --memory-limit`` (so each in a fresh memory
cgroup, strictly one at a time), and classifies it from the exit code, the report JSON
and the executed notebook:

* ``guarded``: a cell raised a MemoryError the report counts as the guard's
  (``guard.tripped``), and the last cell still printed the earlier variable;
* ``died``: the kernel died (exit 3);
* ``false trip``: a guard trip in a workload that fits;
* ``ok``: it ran to the end, no trip;
* anything else (a trip after which the kernel did not answer, another error, a
  timeout) is ``other``, with the report's summary.

``--verify`` first runs each case once with ``--no-guard``, alternating with the guarded
runs: a ``death`` workload must die without the guard and a ``fit`` one must run to the
end, or the case is left out of the counts (and listed). Prints a table per limit and
writes ``benchmarks/GUARD.md`` (not with ``--only`` or ``--quick``, which print only).
NumPy is needed, and pandas for the pandas workloads (``pip install -e .[bench]``).

Every kernel's cgroup is made under one parent cgroup of this run (limited to the
largest limit plus 1 GiB), which is checked for leftovers after each case and removed
at the end. A case waits for the machine to have its limit plus 2 GiB available.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

import kernel_doctor
from kernel_doctor.probe.create import ENV_PARENT, default_parent
from kernel_doctor.sizes import format_size, parse_size

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from guard_workloads import BY_NAME, WORKLOADS, Workload  # noqa: E402

# The installed command, as users run it (not through a pyenv shim's bash).
_SCRIPT = Path(sys.executable).parent / "kernel-doctor"
KERNEL_DOCTOR = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "kernel_doctor"]
DEFAULT_LIMITS = "512M,2G,4G"
QUICK_LIMITS = "512M,2G"
CELL_TIMEOUT = 120  # seconds, per cell (a runaway loop that neither dies nor trips)
RUN_TIMEOUT = 600  # seconds, per case, in case kernel-doctor itself hangs
HEADROOM = 2 * 1024**3  # available memory a case needs beyond its limit
MEMORY_WAIT = 120  # seconds to wait for that before skipping the case
CSV_SHARE = 0.10  # the CSV's frame, as a share of the limit
CSV_COLUMNS = 16

SETUP = """\
import os
import numpy as np

LIMIT = {limit}  # bytes: this run's --memory-limit
CSV = {csv!r}
_PAGE = os.sysconf('SC_PAGE_SIZE')


def used():
    \"\"\"This kernel's resident memory now, in bytes.\"\"\"
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * _PAGE


def room(share):
    \"\"\"Bytes to add to reach ``share`` of the limit.\"\"\"
    return max(0, int(share * LIMIT) - used())


raised = []  # errors of the cells so far (names): after one, the fill cells add nothing
get_ipython().events.register(
    'post_run_cell',
    lambda r: r.error_in_exec is not None and raised.append(type(r.error_in_exec).__name__),
)"""

DEATH_RESULTS = ("guarded", "died", "other")


@dataclass
class Run:
    workload: str
    limit: int
    guard: bool
    result: str  # guarded, died, false trip, ok, other, skipped
    seconds: float
    rc: int | None
    detail: str = ""  # the error's name and the layer; or the summary
    layer: str | None = None
    cause: str | None = None
    guard_evidence: str | None = None
    innermost: str | None = None  # the report's innermost frame, where it was not the cell's
    summary: str = ""
    peak: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- the machine: cgroups, memory, processes -------------------------------------


class Parent:
    """This run's parent cgroup: every kernel's cgroup is made inside it."""

    def __init__(self, limit: int) -> None:
        found = default_parent()
        if found is None:
            raise SystemExit("guard.py: no memory cgroup controller is mounted")
        self.version, base = found
        self.path = os.path.join(base, f"kd-guard-bench-{os.getpid()}")
        os.mkdir(self.path)
        if self.version == 2:
            _write(os.path.join(base, "cgroup.subtree_control"), "+memory", quiet=True)
            _write(os.path.join(self.path, "memory.max"), str(limit))
            _write(os.path.join(self.path, "cgroup.subtree_control"), "+memory", quiet=True)
        else:
            _write(os.path.join(self.path, "memory.limit_in_bytes"), str(limit))
            _write(os.path.join(self.path, "memory.memsw.limit_in_bytes"), str(limit), quiet=True)

    def leftovers(self) -> list[str]:
        """Child cgroups still there, each with the processes in it."""
        out = []
        for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
            if entry.is_dir():
                procs = _read(os.path.join(entry.path, "cgroup.procs")).split()
                out.append(f"{entry.name} (processes: {' '.join(procs) or 'none'})")
        return out

    def clean(self, started: set[int]) -> list[str]:
        """Remove what a case left behind: its processes (only those descended from a
        ``kernel-doctor run`` we started) and its cgroup. What was found, in words."""
        found = self.leftovers()
        for entry in os.scandir(self.path):
            if not entry.is_dir():
                continue
            for pid in _read(os.path.join(entry.path, "cgroup.procs")).split():
                if _descends_from(int(pid), started):
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
            _rmdir(entry.path, timeout=10)
        return found

    def remove(self) -> None:
        _rmdir(self.path, timeout=10)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, value: str, quiet: bool = False) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        if not quiet:
            raise


def _rmdir(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                print(f"guard.py: could not remove {path}", file=sys.stderr)
                return
            time.sleep(0.05)


def _descends_from(pid: int, ancestors: set[int]) -> bool:
    """True when ``pid`` or a parent of it is one of ``ancestors``. A kernel whose
    ``kernel-doctor run`` already exited has been re-parented; its cmdline then says
    whether it is one of our kernels (its connection file is in our runtime dir)."""
    seen = pid
    for _ in range(64):
        if seen in ancestors:
            return True
        stat = _read(f"/proc/{seen}/stat")
        if not stat:
            return False
        seen = int(stat.rsplit(")", 1)[1].split()[1])
        if seen <= 1:
            break
    runtime = os.environ.get("JUPYTER_DATA_DIR", "\0")
    return runtime in _read(f"/proc/{pid}/cmdline")


def stray_cgroups(started: set[int]) -> list[str]:
    """Cgroups our ``kernel-doctor run`` processes made anywhere (named
    ``kernel-doctor-PID-N`` by the process that made them), still there."""
    prefixes = tuple(f"kernel-doctor-{pid}-" for pid in started)
    return [
        os.path.join(top, name)
        for top, dirs, _ in os.walk("/sys/fs/cgroup")
        for name in dirs
        if name.startswith(prefixes)
    ]


def available() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_for_memory(need: int) -> bool:
    deadline = time.monotonic() + MEMORY_WAIT
    while available() < need:
        if time.monotonic() > deadline:
            return False
        time.sleep(2)
    return True


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- one case ---------------------------------------------------------------------


def write_csv(path: Path, limit: int) -> None:
    """A CSV of one-digit integers whose frame (int64) is CSV_SHARE of the limit."""
    rows = int(limit * CSV_SHARE) // (8 * CSV_COLUMNS)
    row = ",".join(str(i % 10) for i in range(CSV_COLUMNS)) + "\n"
    block = row * 10_000
    with open(path, "w") as f:
        f.write(",".join(f"c{i}" for i in range(CSV_COLUMNS)) + "\n")
        for start in range(0, rows, 10_000):
            f.write(block if rows - start >= 10_000 else row * (rows - start))


def notebook(workload: Workload, limit: int, csv: str) -> Any:
    cells = ["keep = 'alive'", SETUP.format(limit=limit, csv=csv)]
    for n, source in enumerate(workload.cells):
        if n == 0:
            cells.append(source)
        else:  # after a MemoryError, add nothing more (see guard_workloads)
            body = "\n".join("    " + line if line else line for line in source.splitlines())
            cells.append(f"if not raised:\n{body}")
    cells.append("print(keep)")
    nb = new_notebook()  # type: ignore[no-untyped-call]
    nb.cells = [new_code_cell(c) for c in cells]  # type: ignore[no-untyped-call]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.validate(nb)
    return nb


def run_case(
    workload: Workload,
    limit: int,
    guard: bool,
    work: Path,
    csv: str,
    parent: Parent,
    started: set[int],
    keep: bool,
) -> Run:
    tag = f"{workload.name}-{limit >> 20}M-{'guard' if guard else 'noguard'}-{time.time_ns()}"
    folder = work / tag
    folder.mkdir()
    nb_path, out_path, report_path = folder / "in.ipynb", folder / "out.ipynb", folder / "r.json"
    nbformat.write(notebook(workload, limit, csv), nb_path)  # type: ignore[no-untyped-call]
    if not wait_for_memory(limit + HEADROOM):
        return Run(workload.name, limit, guard, "skipped", 0.0, None, "not enough free memory")
    command = [
        *KERNEL_DOCTOR,
        "run",
        str(nb_path),
        "--memory-limit",
        str(limit),
        "--report-json",
        str(report_path),
        "--output",
        str(out_path),
        "--allow-errors",
        "--timeout",
        str(CELL_TIMEOUT),
    ]
    if not guard:
        command.append("--no-guard")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_DOCTOR_")}
    env[ENV_PARENT] = parent.path
    t0 = time.monotonic()
    with open(folder / "log.txt", "wb") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=folder,
            start_new_session=True,  # its own group: on a hang, we end it and its kernel
        )
        started.add(proc.pid)
        try:
            rc: int | None = proc.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the process we started
            proc.wait()
            rc = None
    seconds = time.monotonic() - t0
    run = classify(workload, limit, guard, rc, seconds, report_path, out_path, folder)
    left = parent.clean(started)
    if left:
        run.extra["leftovers"] = left
        print(f"  leftovers after {tag}: {left}", file=sys.stderr)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return run


def _memory_error(nb: Any) -> str | None:
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {str(out.get('evalue'))[:120]}"
    return None


def _printed_alive(nb: Any) -> bool:
    outputs = nb.cells[-1].get("outputs", [])
    return any("alive" in str(o.get("text", "")) for o in outputs)


def classify(
    workload: Workload,
    limit: int,
    guard: bool,
    rc: int | None,
    seconds: float,
    report_path: Path,
    out_path: Path,
    folder: Path,
) -> Run:
    report: dict[str, Any] = {}
    if report_path.exists():
        try:
            report = json.loads(report_path.read_text())
        except ValueError:
            report = {}
    nb = nbformat.read(out_path, as_version=4) if out_path.exists() else None  # type: ignore[no-untyped-call]
    error = _memory_error(nb) if nb is not None else None
    trip = report.get("guard") or {}
    evidence = [str(e) for e in report.get("evidence") or []]
    run = Run(
        workload.name,
        limit,
        guard,
        "other",
        seconds,
        rc,
        summary=str(report.get("summary") or ""),
        cause=report.get("cause"),
        peak=(report.get("memory") or {}).get("peak_bytes"),
        guard_evidence=next((e for e in evidence if "guard" in e.lower()), None),
    )
    frames = report.get("stack") or []
    if frames and frames[-1].get("cell_index") is None and rc == 3:
        last = frames[-1]
        run.innermost = f"{last.get('function')} ({last.get('file')}, line {last.get('line')})"
    if rc == 3:
        run.result = "died"
        run.detail = str(report.get("cause"))
    elif rc == 1 and trip.get("tripped"):
        run.layer = trip.get("layer")
        name = error.split(":")[0] if error else "no error output"
        run.detail = f"{name}, {run.layer} layer"
        if workload.expect == "fit":
            run.result = "false trip"
        elif nb is not None and _printed_alive(nb):
            run.result = "guarded"
        else:
            run.detail += "; the last cell did not print the earlier variable"
    elif rc == 0:
        run.result = "ok"
    elif rc == 1 and error and error.split(":")[0].endswith("MemoryError"):
        # A MemoryError the report does not count as the guard's: the kernel lives,
        # but no guard record says why the allocation failed.
        alive = nb is not None and _printed_alive(nb)
        run.detail = (
            f"{error}; no guard record in the report; the earlier variable "
            f"{'was' if alive else 'was not'} printed"
        )
    else:
        tail = (folder / "log.txt").read_text(errors="replace").strip().splitlines()[-3:]
        run.detail = f"exit {rc}: {error or run.summary or ' / '.join(tail)}"
    return run


# --- the matrix -------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limits", help=f"comma-separated (default {DEFAULT_LIMITS})")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="runs of each case")
    parser.add_argument(
        "--quick", action="store_true", help=f"a subset, limits {QUICK_LIMITS}; print only"
    )
    parser.add_argument(
        "--only", metavar="WORKLOAD", help="comma-separated workload names; print only"
    )
    parser.add_argument(
        "--verify", action="store_true", help="run each case once with --no-guard too"
    )
    parser.add_argument("--keep", action="store_true", help="keep each case's files")
    args = parser.parse_args()
    limits = [
        parse_size(t)
        for t in (args.limits or (QUICK_LIMITS if args.quick else DEFAULT_LIMITS)).split(",")
    ]
    if args.only:
        unknown = [n for n in args.only.split(",") if n not in BY_NAME]
        if unknown:
            parser.error(f"unknown workload {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
        workloads = [BY_NAME[n] for n in args.only.split(",")]
    else:
        workloads = [w for w in WORKLOADS if w.quick or not args.quick]
    if importlib.util.find_spec("pandas") is None:  # the kernel runs in this environment
        dropped = [w.name for w in workloads if _needs_pandas(w)]
        if dropped:
            print(f"guard.py: pandas is not installed; left out: {', '.join(dropped)}")
        workloads = [w for w in workloads if not _needs_pandas(w)]
    # Sessions and the reports of the deaths we cause stay out of the user's runtime dir.
    work = Path(tempfile.mkdtemp(prefix="kd-guard-bench-"))
    os.environ["JUPYTER_DATA_DIR"] = str(work / "runtime")
    parent = Parent(max(limits) + 1024**3)
    started: set[int] = set()
    try:
        compileall.compile_dir(os.path.dirname(kernel_doctor.__file__), quiet=1)
        runs, controls, seconds, loads = matrix(args, limits, workloads, work, parent, started)
    finally:
        left = parent.clean(started)
        parent.remove()
        mine = stray_cgroups(started)
        if left or mine:
            print(f"guard.py: LEFT BEHIND: {left} {mine}", file=sys.stderr)
        if args.keep:
            print(f"guard.py: the cases' files are in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    text = results_text(args, limits, workloads, runs, controls, seconds, loads)
    print(text)
    if not (args.only or args.quick):
        (HERE / "GUARD.md").write_text(text)
    return 0


def _needs_pandas(workload: Workload) -> bool:
    return any("import pandas" in cell for cell in workload.cells)


def matrix(
    args: argparse.Namespace,
    limits: list[int],
    workloads: list[Workload],
    work: Path,
    parent: Parent,
    started: set[int],
) -> tuple[list[Run], list[Run], float, tuple[str, str]]:
    runs: list[Run] = []
    controls: list[Run] = []
    t0, before = time.monotonic(), load()
    total = len(limits) * len(workloads) * (args.repeat + args.verify)
    done = 0
    for limit in limits:
        csv = ""
        if any(w.csv for w in workloads):
            csv = str(work / f"frame-{limit >> 20}M.csv")
            write_csv(Path(csv), limit)
        for workload in workloads:
            kinds = [True] * args.repeat + ([False] if args.verify else [])
            random.shuffle(kinds)  # the control among the guarded runs, as bench.py alternates
            for guard in kinds:
                run = run_case(workload, limit, guard, work, csv, parent, started, args.keep)
                (runs if guard else controls).append(run)
                done += 1
                print(
                    f"[{done}/{total}] {format_size(limit):>8} {workload.name:<15} "
                    f"{'guard' if guard else 'no guard':<8} {run.result:<10} "
                    f"{run.seconds:5.1f} s  {run.detail[:90]}",
                    flush=True,
                )
        if csv:
            os.unlink(csv)
    return runs, controls, time.monotonic() - t0, (before, load())


def excluded(workload: Workload, limit: int, controls: list[Run]) -> str | None:
    """Why a case is left out of the counts: its control did not do what it must."""
    for run in controls:
        if run.workload == workload.name and run.limit == limit:
            want = "died" if workload.expect == "death" else "ok"
            if run.result != want:
                return f"without the guard: {run.result} ({run.detail or run.summary})"
    return None


def results_text(
    args: argparse.Namespace,
    limits: list[int],
    workloads: list[Workload],
    runs: list[Run],
    controls: list[Run],
    seconds: float,
    loads: tuple[str, str],
) -> str:
    flags = " ".join(
        part
        for part in (
            f"--limits {args.limits}" if args.limits else "",
            f"--repeat {args.repeat}" if args.repeat != 1 else "",
            "--quick" if args.quick else "",
            f"--only {args.only}" if args.only else "",
            "--verify" if args.verify else "",
        )
        if part
    )
    versions = {}
    for name in ("numpy", "pandas"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    lines = [
        "# Memory guard results",
        "",
        f"`python benchmarks/guard.py{' ' + flags if flags else ''}` on {platform.node()} "
        f"({os.cpu_count()} cores, {available_total()} RAM, {platform.machine()}, Linux "
        f"{platform.release()}, Python {platform.python_version()}, NumPy {versions['numpy']}, "
        f"pandas {versions['pandas']}), {time.strftime('%Y-%m-%d %H:%M')}: "
        f"{len(workloads)} workloads × {len(limits)} limits × {args.repeat} run(s)"
        f"{', each case also once with --no-guard' if args.verify else ''}, one at a time, "
        f"in {seconds / 60:.1f} min. Load average before / after: {loads[0]} / {loads[1]}.",
        "",
        "Each case is a notebook run by `kernel-doctor run --memory-limit L --allow-errors` "
        "in a fresh memory cgroup: `keep = 'alive'`, a setup cell, the workload's fill "
        "cells (sized from L, fill levels measured from the kernel's resident memory), "
        "`print(keep)`. **guarded**: a cell raised the guard's MemoryError and the last "
        "cell printed `alive`; **died**: the kernel died (exit 3); **false trip**: the "
        "guard stopped a workload that fits; **other**: anything else.",
        "",
        "| limit | would-be deaths | guarded | guarded % | died | other | fits | false trips |"
        + (" guarded per repeat |" if args.repeat > 1 else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if args.repeat > 1 else ""),
    ]
    died_lines: list[str] = []
    other_lines: list[str] = []
    left_out: list[str] = []
    for limit in limits:
        c = Counter[str]()
        per_repeat: list[int] = [0] * args.repeat
        for w in workloads:
            why = excluded(w, limit, controls)
            if why:
                left_out.append(f"- {format_size(limit)}, `{w.name}` ({w.fill}): {why}")
                continue
            mine = [r for r in runs if r.workload == w.name and r.limit == limit]
            for i, r in enumerate(mine):
                if r.result == "skipped":
                    c["skipped"] += 1
                    continue
                if w.expect == "death":
                    c["deaths"] += 1
                    c[r.result if r.result in DEATH_RESULTS else "other"] += 1
                    per_repeat[i] += r.result == "guarded"
                    if r.result == "died":
                        died_lines.append(died_line(r, w))
                    elif r.result not in ("guarded", "died"):
                        other_lines.append(
                            f"- {format_size(limit)}, `{w.name}` ({w.fill}): {r.result}: "
                            f"{r.detail or r.summary}"
                        )
                else:
                    c["fits"] += 1
                    c["false trip"] += r.result == "false trip"
                    if r.result not in ("ok", "false trip"):
                        c["fit other"] += 1
                        other_lines.append(
                            f"- {format_size(limit)}, `{w.name}` (fits: {w.fill}): "
                            f"{r.result}: {r.detail or r.summary}"
                        )
        share = f"{c['guarded'] / c['deaths']:.0%}" if c["deaths"] else "–"
        spread = ""
        if args.repeat > 1:
            counts = ", ".join(map(str, per_repeat))
            spread = f" {counts} (min–max {min(per_repeat)}–{max(per_repeat)}) |"
        fits = f"{c['fits']}" + (f" (+{c['fit other']} other)" if c["fit other"] else "")
        lines.append(
            f"| {format_size(limit)} | {c['deaths']} | {c['guarded']} | {share} | {c['died']} | "
            f"{c['other']} | {fits} | {c['false trip']} |" + spread
        )
    lines += ["", "## Cases that died, and why the guard did not act", ""]
    lines += died_lines or ["None."]
    if other_lines:
        lines += ["", "## Other outcomes", "", *other_lines]
    if args.verify:
        lines += ["", "## Left out: not a would-be death (or not a fit) without the guard", ""]
        lines += left_out or ["None: every death workload died without the guard, every fit ran."]
    lines += ["", "## Every case", ""]
    lines += case_table(limits, workloads, runs, controls, args.verify)
    skipped = [r for r in runs + controls if r.result == "skipped"]
    if skipped:
        lines += ["", f"{len(skipped)} case(s) skipped for want of free memory."]
    return "\n".join(lines) + "\n"


def died_line(r: Run, w: Workload) -> str:
    why = r.guard_evidence or "the report names no guard fact"
    where = ""
    if r.innermost:
        where = f" The report's stack ends in {r.innermost}."
        if f"{os.sep}kernel_doctor{os.sep}agent{os.sep}" in r.innermost:
            where += " **That is kernel-doctor's own code, not the workload's.**"
    return (
        f"- {format_size(r.limit)}, `{w.name}` ({w.fill}): cause `{r.cause}`, peak "
        f"{format_size(r.peak)}; {why}.{where}"
    )


def case_table(
    limits: list[int], workloads: list[Workload], runs: list[Run], controls: list[Run], verify: bool
) -> list[str]:
    head = "| workload | fill | expect | " + " | ".join(format_size(li) for li in limits) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(limits)]
    for w in workloads:
        cols = []
        for limit in limits:
            mine = [r for r in runs if r.workload == w.name and r.limit == limit]
            counts = Counter(r.result for r in mine)
            text = ", ".join(
                f"{n}× {res}" if len(mine) > 1 else res for res, n in counts.most_common()
            )
            layers = sorted({r.layer for r in mine if r.layer})
            if layers:
                text += f" ({'/'.join(layers)})"
            secs = statistics.median(r.seconds for r in mine) if mine else 0.0
            text += f", {secs:.0f} s"
            if verify:
                ctrl = [r for r in controls if r.workload == w.name and r.limit == limit]
                if ctrl:
                    text += f"; no guard: {ctrl[0].result}"
            cols.append(text)
        lines.append(f"| `{w.name}` | {w.fill} | {w.expect} | " + " | ".join(cols) + " |")
    return lines


def available_total() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return format_size(int(line.split()[1]) * 1024)
    return "?"


if __name__ == "__main__":
    sys.exit(main())
