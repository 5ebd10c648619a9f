"""``kernel-doctor show ID|latest``: one stored report, rendered or as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from .._errors import UsageError
from ..agent.private import printable
from ..reports.history import find_report, latest_report, read_report, warn_stderr
from ..reports.model import BadReport, Report


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", nargs="?", default="latest", help="report ID or 'latest'")
    parser.add_argument("--json", action="store_true", help="print the report's JSON")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="show the evidence and full paths too"
    )


def _not_stored(name: str) -> UsageError:
    return UsageError(
        f"no stored report {printable(name)!r}: `kernel-doctor reports` lists the stored ones"
    )


def find(name: str) -> Report:
    """The report ``show`` shows: ``latest`` is the newest valid one (a newer file that
    is not a report is skipped with a warning); a named one that is not a report is a
    one-line error, exit 2."""
    if name == "latest":
        report = latest_report(warn_stderr)
        if report is None:
            raise _not_stored(name)
        return report
    path = find_report(name)
    if path is None:
        raise _not_stored(name)
    try:
        return read_report(path)
    except BadReport as exc:
        raise UsageError(
            f"report {printable(name)!r} is not a report kernel-doctor can read ({exc}); "
            f"delete {printable(path)} (`kernel-doctor reports` lists the valid ones)"
        ) from None


def run(args: argparse.Namespace) -> int:
    report = find(args.report)
    if args.json:
        sys.stdout.write(json.dumps(report.to_json(), indent=1) + "\n")
        return 0
    from ..reports.render import render

    render(report, verbose=args.verbose)
    return 0
