"""``kernel-doctor show ID|latest``: one stored report, rendered or as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from .._errors import UsageError
from ..reports.history import find_report, load_report


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", nargs="?", default="latest", help="report ID or 'latest'")
    parser.add_argument("--json", action="store_true", help="print the report's JSON")


def run(args: argparse.Namespace) -> int:
    path = find_report(args.report)
    if path is None:
        raise UsageError(
            f"no stored report {args.report!r}: `kernel-doctor reports` lists the stored ones"
        )
    document = load_report(path)
    if args.json:
        sys.stdout.write(json.dumps(document, indent=1) + "\n")
        return 0
    from ..reports.render import render

    render(document)
    return 0
