"""``kernel-doctor reports``: the stored death reports of this user, newest first.

Files in the reports folder that are not valid reports are skipped, each with one
warning line on stderr: the listing (and its ``--json``) stays whole."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..agent.naming import cell_place
from ..agent.private import printable
from ..reports.history import stored_reports, warn_stderr
from ..reports.model import Report
from ..sizes import format_size


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("-n", "--limit", type=int, default=50, help="at most N (default 50)")


def kernel_label(report: Report) -> str:
    """The notebook where a server named it, else the kernelspec or connection file."""
    kernel = report.kernel
    if kernel is None:
        return "-"
    if kernel.session_name:
        return kernel.session_name
    parts = [kernel.name or ""]
    if kernel.connection_file:
        parts.append(os.path.basename(kernel.connection_file))
    return " ".join(p for p in parts if p) or "-"


def where(report: Report) -> str:
    cell = report.cell
    if cell is None:
        return "-"
    return cell_place(cell.execution_count, cell.index, report.line, unknown="?", short=True)


def memory(report: Report) -> str:
    mem = report.memory
    if not mem.limit_bytes:
        return "-"
    return f"{format_size(mem.peak_bytes)} / {format_size(mem.limit_bytes)}"


def run(args: argparse.Namespace) -> int:
    reports = stored_reports(warn_stderr)[: max(args.limit, 0)]
    if args.json:
        sys.stdout.write(json.dumps([r.to_json() for r in reports], indent=1) + "\n")
        return 0
    if not reports:
        sys.stdout.write("no kernel deaths recorded\n")
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    # The id is the death's date and time and what `show` takes: never broken.
    table.add_column("id (when-pid)", no_wrap=True)
    for column in ("cause", "cell:line", "peak / limit"):
        table.add_column(column, no_wrap=True)
    table.add_column("notebook / kernel", overflow="fold")
    for report in reports:
        cells = (str(report.id), report.cause or "-", where(report), memory(report))
        # Text, not str: a str cell is rich markup, and a notebook's name is the user's.
        table.add_row(*(Text(printable(c)) for c in (*cells, kernel_label(report))))
    Console(highlight=False).print(table)
    sys.stdout.write("details: kernel-doctor show ID (or: show latest)\n")
    return 0
