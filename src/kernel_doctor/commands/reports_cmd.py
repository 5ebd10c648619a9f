"""``kernel-doctor reports``: the stored death reports, newest first."""

from __future__ import annotations

import argparse
import json
import sys

from ..reports.history import list_reports


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the list as JSON")


def run(args: argparse.Namespace) -> int:
    reports = list_reports()
    if args.json:
        sys.stdout.write(json.dumps(reports, indent=1) + "\n")
        return 0
    if not reports:
        sys.stdout.write("no kernel deaths recorded\n")
        return 0
    for doc in reports:
        cell = doc.get("cell") or {}
        where = f"[{cell.get('execution_count')}]" if cell else "-"
        line = f" line {doc['line']}" if doc.get("line") else ""
        sys.stdout.write(
            f"{doc.get('id')}  {doc.get('cause') or '-':<16} {where}{line}  {doc.get('summary')}\n"
        )
    return 0
