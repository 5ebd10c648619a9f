"""``kernel-doctor uninstall [KERNELSPEC…]``: remove the twins that install wrote."""

from __future__ import annotations

import argparse
import sys


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kernelspecs",
        nargs="*",
        metavar="KERNELSPEC",
        help="twins to remove (default: every twin kernel-doctor wrote)",
    )


def run(args: argparse.Namespace) -> int:
    from .. import kernelspecs

    removed = kernelspecs.uninstall(args.kernelspecs)
    if not removed:
        sys.stdout.write("no kernel-doctor kernelspecs installed\n")
    for name, path in removed:
        sys.stdout.write(f"removed {name} from {path}\n")
    return 0
