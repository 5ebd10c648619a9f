"""``kernel-doctor status``: which kernelspecs are supervised, where, and whether the
agent loads in each (found by trying each Python, so it takes a moment)."""

from __future__ import annotations

import argparse
import json
import sys


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the table as JSON")


def run(args: argparse.Namespace) -> int:
    from .. import kernelspecs

    rows = []
    for spec in kernelspecs.all_specs():
        rows.append(
            {
                "name": spec.name,
                "display_name": spec.display_name,
                "supervised": spec.supervised,
                "twin_of": spec.twin_of,
                "resource_dir": spec.resource_dir,
                "state": kernelspecs.check(spec),
            }
        )
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return 0
    if not rows:
        sys.stdout.write("no kernelspecs found\n")
    for row in rows:
        twin = f" (twin of {row['twin_of']})" if row["twin_of"] else ""
        sys.stdout.write(f"{row['name']}{twin}: {row['state']}\n    {row['resource_dir']}\n")
    if not any(row["supervised"] for row in rows):
        sys.stdout.write("\nnone is supervised: `kernel-doctor install` adds a twin of python3\n")
    return 0
