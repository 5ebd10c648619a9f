"""``kernel-doctor top``: a live view of the kernels on this machine.

Supervised kernels in full (state, running cell and line, memory against the limit
that applies, CPU, deaths so far); plain ipykernel processes with what /proc tells.
Redraws about once a second; ``q`` quits. Fits an 80-column terminal over ssh.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

from ..agent.naming import cell_place
from ..agent.private import printable
from ..agent.protocol import last_sample, started_cell
from ..diagnosis.hang import duration
from ..live import LiveKernel, live_kernels
from ..probe import procfs
from ..probe.files import read_text
from ..probe.threads import TICKS, cpu_ticks


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="print one view and exit")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between redraws")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    cpu, deaths = CpuMeter(), DeathCount()
    if args.once or not sys.stdin.isatty():
        cpu.sample(_all_pids())
        time.sleep(0.2)
        console.print(view(cpu, deaths))
        return 0
    with (
        _cbreak(),
        Live(view(cpu, deaths), console=console, auto_refresh=False, screen=True) as live,
    ):
        while True:
            ready = select.select([sys.stdin], [], [], max(0.1, args.interval))[0]
            if ready and sys.stdin.read(1).lower() == "q":
                return 0
            live.update(view(cpu, deaths), refresh=True)


@contextlib.contextmanager
def _cbreak() -> Iterator[None]:
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class CpuMeter:
    """CPU share of each process between two redraws."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[float, int]] = {}

    def sample(self, pids: list[int]) -> dict[int, float]:
        now, shares = time.monotonic(), {}
        for pid in pids:
            ticks = _ticks(pid)
            if ticks is None:
                continue
            before = self.last.get(pid)
            if before is not None and now > before[0]:
                shares[pid] = (ticks - before[1]) / TICKS / (now - before[0])
            self.last[pid] = (now, ticks)
        return shares


def _ticks(pid: int) -> int | None:
    return cpu_ticks(read_text(f"/proc/{pid}/stat"))


def plain_kernels(known: set[int]) -> list[tuple[int, str]]:
    """This user's ipykernel processes that no supervisor of ours watches: (pid,
    connection file). Other users' are theirs to watch (and their command lines say
    whatever they like)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in known or not procfs.owned_by_me(int(name)):
            continue
        argv = procfs.argv(int(name))
        if any("ipykernel" in a for a in argv[:3]) and "kernel_doctor.supervise" not in argv:
            connection = next((a for a in argv if a.endswith(".json")), "")
            found.append((int(name), printable(os.path.basename(connection))))
    return found


def _all_pids() -> list[int]:
    kernels = live_kernels()
    return [k.kernel_pid for k in kernels] + [p for p, _ in plain_kernels(set())]


class DeathCount:
    """Deaths so far per notebook (or connection file), each report read once: the
    kernel's own, and its workers' (``children``) while it lived."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.counts: dict[str, int] = {}
        self.children: dict[str, int] = {}

    def update(self) -> dict[str, int]:
        from ..reports.history import new_stored

        for report in new_stored(self.seen):
            kernel = report.kernel
            label = (kernel.session_name or kernel.connection_file or "") if kernel else ""
            counts = self.children if report.outcome == "child_died" else self.counts
            counts[label] = counts.get(label, 0) + 1
        return self.counts


def _bar(used: int, limit: int, width: int = 6) -> str:
    share = min(1.0, used / limit) if limit else 0.0
    full = round(share * width)
    return "█" * full + "░" * (width - full) + f"{share:4.0%}"


def _short(num: int) -> str:
    """ "280M", "7.8G": a size in four or five characters."""
    for unit in ("B", "K", "M", "G", "T"):
        if num < 1024 or unit == "T":
            return f"{num:.0f}{unit}" if num >= 10 or unit == "B" else f"{num:.1f}{unit}"
        num /= 1024  # type: ignore[assignment]
    return "?"


def view(cpu: CpuMeter, died: DeathCount) -> Any:
    from rich.table import Table
    from rich.text import Text

    kernels = live_kernels()
    plain = plain_kernels({k.kernel_pid for k in kernels})
    shares = cpu.sample([k.kernel_pid for k in kernels] + [p for p, _ in plain])
    deaths = died.update()
    from rich import box

    table = Table(
        title=f"kernel-doctor top · {len(kernels)} supervised, {len(plain)} plain · q quits",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
    )
    table.add_column("pid", no_wrap=True)
    table.add_column("kernel", max_width=14, no_wrap=True, overflow="ellipsis")
    table.add_column("state", no_wrap=True)
    table.add_column("cell", no_wrap=True)
    table.add_column("memory / limit", no_wrap=True)
    table.add_column("cpu", justify="right", no_wrap=True)
    # Deaths so far: the kernel's, then its workers' ("1 +2w": one kernel death, two
    # workers OOM-killed or crashed while it lived).
    table.add_column("died", justify="right", no_wrap=True)
    for k in kernels:
        label = str(k.meta.session_name or k.meta.connection_file or "")
        row = _row(k, shares.get(k.kernel_pid), deaths)
        workers = died.children.get(label, 0)
        table.add_row(*row[:-1], row[-1] + (f" +{workers}w" if workers else ""))
    for pid, connection in plain:
        rss = procfs.rss_bytes(pid) or 0
        share = shares.get(pid)
        table.add_row(
            str(pid), Text(connection or "ipykernel"), "plain", "-", _short(rss),
            f"{share:.0%}" if share is not None else "-", "-",
        )  # fmt: skip
    return table


def _row(k: LiveKernel, share: float | None, deaths: dict[str, int]) -> list[Any]:
    from rich.text import Text

    state = k.state
    since = state.started if k.busy else state.t
    age = duration(time.time() - since) if since is not None else ""
    cell = "-"
    if k.busy:
        line = state.line
        record = started_cell(k.session_dir, state.seq)
        count = record.execution_count if record else None
        cell = cell_place(count, None, line, unknown="?", short=True)
    sample = last_sample(k.session_dir)
    used = sample[2] if sample else 0  # the kernel's own processes
    limit = k.meta.limit.limit_bytes if k.meta.limit else 0
    memory = f"{_bar(used, limit)} {_short(used)}/{_short(limit)}"
    label = k.meta.session_name or k.meta.connection_file or ""
    return [
        str(k.kernel_pid),
        Text(os.path.basename(k.label)),  # text, never rich markup
        f"{'busy' if k.busy else 'idle'} {age}",
        cell,
        memory,
        f"{share:.0%}" if share is not None else "-",
        str(deaths.get(str(label), 0)),
    ]
