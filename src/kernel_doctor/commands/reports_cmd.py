"""``kernel-doctor reports``: the stored death reports of this user, newest first."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..reports.history import list_reports
from ..sizes import format_size


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("-n", "--limit", type=int, default=50, help="at most N (default 50)")


def kernel_label(doc: dict[str, Any]) -> str:
    """The notebook where a server named it, else the kernelspec or connection file."""
    kernel = doc.get("kernel") or {}
    if kernel.get("session_name"):
        return str(kernel["session_name"])
    parts = [str(kernel.get("name") or "")]
    if kernel.get("connection_file"):
        parts.append(os.path.basename(str(kernel["connection_file"])))
    return " ".join(p for p in parts if p) or "-"


def where(doc: dict[str, Any]) -> str:
    cell = doc.get("cell") or {}
    if not cell:
        return "-"
    count = cell.get("execution_count")
    text = f"[{count}]" if count is not None else "?"
    return text + (f":{doc['line']}" if doc.get("line") else "")


def memory(doc: dict[str, Any]) -> str:
    mem = doc.get("memory") or {}
    if not mem.get("limit_bytes"):
        return "-"
    return f"{format_size(mem.get('peak_bytes'))} / {format_size(mem['limit_bytes'])}"


def run(args: argparse.Namespace) -> int:
    reports = list_reports()[: max(args.limit, 0)]
    if args.json:
        sys.stdout.write(json.dumps(reports, indent=1) + "\n")
        return 0
    if not reports:
        sys.stdout.write("no kernel deaths recorded\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    # The id is the death's date and time and what `show` takes: never broken.
    table.add_column("id (when-pid)", no_wrap=True)
    for column in ("cause", "cell:line", "peak / limit"):
        table.add_column(column, no_wrap=True)
    table.add_column("notebook / kernel", overflow="fold")
    for doc in reports:
        table.add_row(
            str(doc.get("id")),
            str(doc.get("cause") or "-"),
            where(doc),
            memory(doc),
            kernel_label(doc),
        )
    Console(highlight=False).print(table)
    sys.stdout.write("details: kernel-doctor show ID (or: show latest)\n")
    return 0
