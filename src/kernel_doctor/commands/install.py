"""``kernel-doctor install [KERNELSPEC…]``: write supervised twins of kernelspecs."""

from __future__ import annotations

import argparse
import sys

from .._errors import UsageError


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kernelspecs", nargs="*", metavar="KERNELSPEC", help="kernelspecs to twin (python3)"
    )
    parser.add_argument("--all", action="store_true", help="every kernelspec found")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="in your Jupyter data dir (default)")
    where.add_argument("--sys-prefix", action="store_true", help="in this Python's prefix")
    where.add_argument("--prefix", metavar="PATH", help="under PATH/share/jupyter/kernels")
    parser.add_argument("--name", help="the twin's kernelspec name (default: SOURCE-doctor)")
    parser.add_argument("--display-name", help="the name shown in the launcher")


def run(args: argparse.Namespace) -> int:
    from .. import kernelspecs

    if args.all and args.kernelspecs:
        raise UsageError("give kernelspec names or --all, not both")
    if args.all:
        sources = [s.name for s in kernelspecs.all_specs() if not s.supervised]
        if not sources:
            raise UsageError("no unsupervised kernelspec found to install a twin of")
    else:
        sources = args.kernelspecs or ["python3"]
    prefix = sys.prefix if args.sys_prefix else args.prefix
    installed = kernelspecs.install(
        sources,
        user=prefix is None,
        prefix=prefix,
        name=args.name,
        display_name=args.display_name,
    )
    for name, path in installed:
        sys.stdout.write(f"installed {name} in {path}\n")
    return 0
