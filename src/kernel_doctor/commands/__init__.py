"""The ``kernel-doctor`` command line (also ``jupyter doctor``).

Each subcommand is a module with ``prepare_parser(parser)`` and ``run(args) -> int``;
``main`` parses, dispatches, and turns kernel-doctor's errors into one-line messages
and their exit codes, here and nowhere else.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from .. import __version__
from .._errors import ExitCode, KernelDoctorError, UsageError
from . import install, reports_cmd, run, show, status, top, uninstall, where

COMMANDS: dict[str, tuple[ModuleType, str]] = {
    "run": (run, "execute a notebook under supervision and diagnose any kernel death"),
    "show": (show, "show one stored death report (ID or 'latest')"),
    "reports": (reports_cmd, "list stored death reports, newest first"),
    "install": (install, "install supervised twins of kernelspecs"),
    "uninstall": (uninstall, "remove the kernelspecs that install wrote"),
    "status": (status, "show what is supervised: kernelspecs, agent, server setting"),
    "where": (where, "show where a running supervised kernel is stuck, every thread"),
    "top": (top, "live view of the kernels on this machine (q quits)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kernel-doctor", description="Every Jupyter kernel death explained.")
    parser.add_argument("--version", action="version", version=f"kernel-doctor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        module.prepare_parser(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        if args.command is None:
            parser.print_help(sys.stderr)
            return ExitCode.USAGE
        module, _ = COMMANDS[args.command]
        return int(module.run(args))
    except KernelDoctorError as exc:
        code = getattr(exc, "exit_code", ExitCode.USAGE)
        sys.stderr.write(f"kernel-doctor: error: {exc}\n")
        return int(code)
    except KeyboardInterrupt:
        sys.stderr.write("kernel-doctor: interrupted\n")
        return 130


def entry_point() -> NoReturn:
    sys.exit(main())
