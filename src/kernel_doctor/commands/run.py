"""``kernel-doctor run NOTEBOOK``: execute a notebook under supervision.

Exit codes: 0 every cell ran, 1 a cell raised, 2 bad usage or input,
3 the kernel died, 4 a cell timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .._errors import UsageError
from ..sizes import parse_size


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the .ipynb file to execute")
    parser.add_argument("--output", "-o", metavar="PATH", help="write the executed notebook here")
    parser.add_argument(
        "--inplace", action="store_true", help="allow --output to be the input notebook"
    )
    parser.add_argument("--timeout", metavar="SECONDS", help="per-cell timeout")
    parser.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="run the kernel in a fresh memory cgroup with this limit (512M, 1.5G, 2GiB)",
    )
    parser.add_argument("--report-json", metavar="PATH", help="write the report as JSON here")
    parser.add_argument(
        "--kernel", metavar="NAME", help="kernelspec to use instead of the notebook's"
    )
    parser.add_argument(
        "--allow-errors", action="store_true", help="keep going after a cell raises"
    )
    guard = parser.add_mutually_exclusive_group()
    guard.add_argument(
        "--guard",
        metavar="THRESHOLD",
        help="stop a cell with MemoryError when its growth passes this share or size of "
        "the limit (default 90%%)",
    )
    guard.add_argument("--no-guard", action="store_true", help="let memory growth run")


def _read_notebook(path: str) -> Any:
    import nbformat

    if not os.path.exists(path):
        raise UsageError(f"notebook {path!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{path!r} is a directory, not a notebook")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read notebook {path!r}: {exc}") from exc
    if not text.strip():
        raise UsageError(f"notebook {path!r} is empty")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"notebook {path!r} is not valid JSON ({exc})") from exc
    except RecursionError:
        raise UsageError(f"notebook {path!r} is nested too deeply to be a notebook") from None
    if not isinstance(data, dict) or ("cells" not in data and "worksheets" not in data):
        raise UsageError(f"{path!r} is JSON but not a Jupyter notebook (no 'cells')")
    major = data.get("nbformat")
    if not isinstance(major, int) or major < 3 or major > 4:
        raise UsageError(
            f"notebook {path!r} has nbformat {major!r}; kernel-doctor reads versions 3 and 4"
        )
    try:
        nb = nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
        nbformat.validate(nb)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"notebook {path!r} is not a valid notebook: {first}") from exc
    return nb


def _kernel_name(nb: Any, requested: str | None) -> str:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    name = requested or nb.metadata.get("kernelspec", {}).get("name") or "python3"
    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        known = ", ".join(sorted(KernelSpecManager().find_kernel_specs())) or "none"
        raise UsageError(
            f"unknown kernel {name!r} (installed: {known}); pick one with --kernel NAME"
        ) from None
    return str(name)


def _timeout(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--timeout {text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"--timeout must be a positive number of seconds, not {text!r}")
    return value


def _check_writable(flag: str, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a directory; give a file name")
    if not os.path.isdir(directory):
        raise UsageError(f"{flag} {path!r}: the directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"{flag} {path!r}: the directory {directory!r} is not writable")


def _guard(text: str | None) -> str | None:
    if text is None:
        return None
    value = text.strip()
    if value.endswith("%"):
        try:
            share = float(value[:-1])
        except ValueError:
            share = -1.0
        if not 0 < share <= 100:
            raise UsageError(f"--guard {text!r}: give a percentage above 0 and up to 100%")
        return value
    parse_size(value)  # a size, or a one-line error naming the forms it reads
    return value


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    # Check every input before anything starts, so bad input costs nothing.
    nb = _read_notebook(args.notebook)
    timeout = _timeout(args.timeout)
    limit = parse_size(args.memory_limit) if args.memory_limit is not None else None
    if args.output and not args.inplace and _same_file(args.output, args.notebook):
        raise UsageError(
            f"--output {args.output!r} is the input notebook; add --inplace to overwrite it"
        )
    if args.report_json and _same_file(args.report_json, args.notebook):
        raise UsageError(
            f"--report-json {args.report_json!r} is the input notebook; "
            "give the report a file of its own"
        )
    for flag, target in (("--output", args.output), ("--report-json", args.report_json)):
        if target:
            _check_writable(flag, target)
    kernel = _kernel_name(nb, args.kernel)
    guard = "off" if args.no_guard else _guard(args.guard)

    from rich.console import Console

    from ..batch import describe_limit, run_notebook
    from ..probe.create import make_limited_cgroup
    from ..reports.render import render
    from ..reports.store import write_json

    cgroup = make_limited_cgroup(limit) if limit is not None else None
    err = Console(stderr=True, highlight=False)
    err.print(
        f"kernel-doctor: running {args.notebook} on kernel {kernel!r}, "
        f"memory limit: {describe_limit(cgroup)}"
    )
    result = run_notebook(
        nb,
        kernel_name=kernel,
        cwd=os.path.dirname(os.path.abspath(args.notebook)),
        timeout=timeout,
        cgroup=cgroup,
        allow_errors=args.allow_errors,
        guard=guard,
        log=lambda text: err.print(f"kernel-doctor: {text}", style="dim"),
    )
    if args.output:
        import nbformat

        nbformat.write(result.notebook, args.output)  # type: ignore[no-untyped-call]
    if args.report_json:
        write_json(args.report_json, result.report)
    render(result.report, Console(file=sys.stdout))
    return int(result.exit_code)
