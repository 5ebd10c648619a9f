"""What checkpoints of a notebook's variables cost, and what they are worth (issue 16).

    python benchmarks/checkpoint.py [--quick] [--limit 6G] [--repeat N]

Each workload notebook runs in two supervised kernels of the same run, alternately,
each in a fresh memory cgroup of ``--limit``: checkpoints on, and off
(``KERNEL_DOCTOR_CHECKPOINT=off``), in two ways: cells back to back, as
``kernel-doctor run --checkpoint`` runs them (``always``: written while cells run), and
as a person runs them, with ``--think`` seconds between cells (``on``, the default:
written in the pauses). Reported:

* the notebook's time (the cells' own, without the pauses), on and off (median of
  ``--repeat`` runs back to back, one run with pauses);
* the round trip of a trivial cell after the workload (median of 200), on and off;
* the cgroup's peak memory, on and off;
* the disk the checkpoints hold, and how long after the last cell the last one was whole;
* restore: the on kernel is SIGKILLed, a new kernel of the same notebook runs
  ``%doctor restore``; its time against the notebook's run time (what re-running costs).

Writes ``benchmarks/CHECKPOINT.md`` (not with ``--quick``). NumPy and pandas are
needed (``pip install -e .[bench]``); the model workload uses PyTorch where installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager

from kernel_doctor.launch import supervisor_command
from kernel_doctor.probe.create import LimitedCgroup, make_limited_cgroup
from kernel_doctor.sizes import format_size, parse_size

HERE = Path(__file__).parent
MiB = 1024**2


def workloads(scale: float) -> dict[str, list[str]]:
    """Notebooks as people write them: data made, then worked on, cell by cell."""
    small, mid, big = (int(n * scale) for n in (100 * MiB, 500 * MiB, 2048 * MiB))
    rows = int(4_000_000 * scale)
    items = int(1_000_000 * scale)
    found = {
        "numpy (100 MB, 500 MB, 2 GB arrays)": [
            "import numpy as np\nrng = np.random.default_rng(0)",
            f"a = rng.random({small // 8})",
            "b = np.sort(a)",
            f"c = rng.random({mid // 8})",
            "stats = {'mean': float(c.mean()), 'std': float(c.std())}",
            f"d = np.ones({big // 8})\nd *= 3",
            "total = float(d.sum() + b[:10].sum())",
            f"u, s, vt = np.linalg.svd(rng.random(({int(1500 * scale**0.5)}, "
            f"{int(1500 * scale**0.5)})))  # compute-bound",
        ],
        f"pandas ({rows:,} rows)": [
            "import numpy as np, pandas as pd\nrng = np.random.default_rng(0)",
            f"df = pd.DataFrame({{'k': rng.integers(0, 1000, {rows}), 'v': rng.random({rows})}})",
            "g = df.groupby('k')['v'].agg(['mean', 'sum'])",
            "df['w'] = df['v'] * 2",
            "m = df.merge(g, left_on='k', right_index=True)",
            "top = m.nlargest(100, 'w')",
        ],
        f"small objects ({items:,} records)": [
            f"records = [{{'id': i, 'name': f'item{{i}}', 'tags': [i % 7, i % 11]}} "
            f"for i in range({items})]",
            "index = {r['name']: r for r in records}",
            f"words = ' '.join(str(i) for i in range({items // 2})).split()",
            "counts = {}\nfor w in words:\n    counts[w[-1]] = counts.get(w[-1], 0) + 1",
        ],
    }
    try:
        import torch  # noqa: F401

        found["model (PyTorch MLP, 32 MB of weights, 200 training steps)"] = [
            "import torch\ntorch.manual_seed(0)",
            "model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), "
            "torch.nn.Linear(4096, 1024))\nopt = torch.optim.SGD(model.parameters(), lr=0.01)",
            f"for _ in range({int(200 * scale)}):\n    x = torch.randn(256, 1024)\n"
            "    loss = model(x).pow(2).mean()\n    opt.zero_grad(); loss.backward(); opt.step()",
            "final = float(loss)",
        ]
    except ImportError:
        pass
    return found


class Kernel:
    def __init__(self, cgroup: LimitedCgroup, env: dict[str, str]) -> None:
        prefix = supervisor_command({"cgroup": str(cgroup.path)})

        class Supervised(KernelManager):
            def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
                return [*prefix, *super().format_kernel_cmd(extra_arguments)]

        self.km = Supervised(kernel_name="python3")
        self.km.start_kernel(env={**os.environ, **env})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 600) -> tuple[float, str]:
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            content = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(content["text"])
            elif msg["msg_type"] in ("display_data", "execute_result"):
                out.append(content["data"].get("text/plain", ""))
            elif msg["msg_type"] == "error":
                out.append(f"{content['ename']}: {content['evalue']}")

        t0 = time.perf_counter()
        self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return time.perf_counter() - t0, "".join(out)

    def pid(self) -> int:
        _, text = self.run("import os as _os; print(_os.getpid())")
        return int(text.strip().splitlines()[-1])

    def stop(self, now: bool = True) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=now)


def peak(cgroup: LimitedCgroup) -> int:
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        try:
            return int(Path(str(cgroup.path), name).read_text().split()[0])
        except (OSError, ValueError):
            continue
    return 0


def store_root() -> Path:
    return Path(os.environ["JUPYTER_DATA_DIR"]) / "kernel-doctor" / "checkpoints"


def wait_whole(count: int, name: str, timeout: float = 600) -> float:
    """Seconds until a generation after In [count] of notebook ``name`` is on disk."""
    from kernel_doctor.agent.store import notebook_key

    folder = store_root() / notebook_key(name)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        for manifest in folder.glob("*/g-*/manifest.json"):
            try:
                if json.loads(manifest.read_text()).get("execution_count") == count:
                    return time.perf_counter() - t0
            except (OSError, ValueError):
                pass
        time.sleep(0.05)
    return float("nan")


def run_case(
    cells: list[str], on: bool, limit: int, name: str, think: float = 0.0
) -> dict[str, Any]:
    cgroup = make_limited_cgroup(limit)
    # Back to back as `kernel-doctor run --checkpoint` writes them ("always": while cells
    # run); with pauses as an interactive kernel does by default ("on": in the pauses).
    setting = ("on" if think else "always") if on else "off"
    env = {"JPY_SESSION_NAME": name, "KERNEL_DOCTOR_CHECKPOINT": setting}
    kernel = Kernel(cgroup, env)
    result: dict[str, Any] = {}
    try:
        spent = 0.0
        for cell in cells:
            took, text = kernel.run(cell)
            if "Error" in text:
                raise RuntimeError(f"{cell!r}: {text}")
            spent += took
            time.sleep(think)
        result["notebook_s"] = spent
        if think:
            result["peak"] = peak(cgroup)
            return result
        trips = [kernel.run("pass")[0] for _ in range(200)]
        result["round_trip_s"] = statistics.median(trips)
        if on:
            # The last cell's count: the workload's cells, then the 200 trivial ones.
            result["lag_s"] = wait_whole(len(cells) + 200, name)
            result["disk"] = sum(p.stat().st_size for p in (store_root()).rglob("*") if p.is_file())
        result["peak"] = peak(cgroup)
        if on:
            os.kill(kernel.pid(), signal.SIGKILL)
            time.sleep(1.0)
    finally:
        kernel.stop()
        cgroup.remove()
    if on:
        cgroup = make_limited_cgroup(limit)
        kernel = Kernel(cgroup, env)
        try:
            took, text = kernel.run("%doctor restore")
            result["restore_s"] = took
            said = [line for line in text.splitlines() if line.startswith("Restored")]
            result["restore_text"] = said[0] if said else text
        finally:
            kernel.stop()
            cgroup.remove()
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a tenth of the data, one run")
    parser.add_argument("--limit", default="6G", help="each kernel's memory limit")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--think", type=float, default=2.0, help="seconds between cells")
    args = parser.parse_args()
    limit = parse_size(args.limit)
    scale = 0.1 if args.quick else 1.0
    repeat = 1 if args.quick else args.repeat
    data = tempfile.mkdtemp(prefix="kd-bench-checkpoint-")
    os.environ["JUPYTER_DATA_DIR"] = data
    rows = []
    try:
        for title, cells in workloads(scale).items():
            runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
            paused: dict[bool, dict[str, Any]] = {}
            run_case(cells, False, limit, f"/bench/{title}/warm-up.ipynb")  # caches, imports
            for on in (False, True):
                name = f"/bench/{title}/paused.ipynb"
                paused[on] = run_case(cells, on, limit, name, think=args.think)
                print(title, "paused", "on" if on else "off", paused[on], flush=True)
            for i in range(repeat):
                for on in (False, True) if i % 2 == 0 else (True, False):
                    shutil.rmtree(store_root(), ignore_errors=True)
                    name = f"/bench/{title}/{i}.ipynb"
                    runs[on].append(run_case(cells, on, limit, name))
                    print(title, "on" if on else "off", runs[on][-1], flush=True)
            rows.append((title, runs, paused))
    finally:
        shutil.rmtree(data, ignore_errors=True)
    text = report(rows, args, scale)
    print(text)
    if not args.quick:
        (HERE / "CHECKPOINT.md").write_text(text)
    return 0


def report(rows: list[tuple[str, Any, Any]], args: argparse.Namespace, scale: float) -> str:
    def med(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    lines = [
        "# Checkpoint benchmark",
        "",
        f"`python benchmarks/checkpoint.py{' --quick' if args.quick else ''}` on "
        f"{platform.node()} ({os.cpu_count()} cores, Linux {platform.release()}, Python "
        f"{platform.python_version()}), {time.strftime('%Y-%m-%d')}; each kernel in a "
        f"memory cgroup of {args.limit}; data scale {scale}.",
        "",
        f"As a person runs a notebook ({args.think:g} s between cells; the cells' own time; "
        "checkpoints as interactive kernels write them by default, in the pauses):",
        "",
        "| workload | notebook off → on | ratio | peak memory off → on | added |",
        "|---|---|---|---|---|",
    ]
    for title, _, paused in rows:
        n_on, n_off = paused[True]["notebook_s"], paused[False]["notebook_s"]
        p_on, p_off = paused[True]["peak"], paused[False]["peak"]
        lines.append(
            f"| {title} | {n_off:.2f} s → {n_on:.2f} s | {n_on / n_off:.3f} | "
            f"{format_size(int(p_off))} → {format_size(int(p_on))} | "
            f"{(p_on - p_off) / max(p_off, 1):+.1%} |"
        )
    lines += [
        "",
        f"Cells back to back, as `kernel-doctor run --checkpoint` runs them (checkpoints "
        f"written while cells run), medians of "
        f"{1 if args.quick else args.repeat} runs each, on and off alternating:",
        "",
        "| workload | notebook off → on | ratio | round trip off → on | ratio "
        "| peak memory off → on | added | checkpoints on disk | last one whole after "
        "| restore | re-run | re-run / restore |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for title, runs, _ in rows:
        on, off = runs[True], runs[False]
        n_on, n_off = med(on, "notebook_s"), med(off, "notebook_s")
        t_on, t_off = med(on, "round_trip_s"), med(off, "round_trip_s")
        p_on, p_off = med(on, "peak"), med(off, "peak")
        restore = med(on, "restore_s")
        lines.append(
            f"| {title} | {n_off:.2f} s → {n_on:.2f} s | {n_on / n_off:.3f} | "
            f"{t_off * 1e3:.2f} → {t_on * 1e3:.2f} ms | {t_on / t_off:.3f} | "
            f"{format_size(int(p_off))} → {format_size(int(p_on))} | "
            f"{(p_on - p_off) / max(p_off, 1):+.1%} | {format_size(int(med(on, 'disk')))} | "
            f"{med(on, 'lag_s'):.1f} s | {restore:.2f} s | {n_off:.2f} s | "
            f"{n_off / restore:.1f}× |"
        )
    lines += ["", "What `%doctor restore` said, one run of each:", ""]
    for title, runs, _ in rows:
        lines.append(f"- {title}: {runs[True][0].get('restore_text', '')}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
