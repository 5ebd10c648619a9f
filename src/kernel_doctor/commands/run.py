"""``kernel-doctor run NOTEBOOK``: execute a notebook under supervision.

Exit codes: 0 every cell ran, 1 a cell raised, 2 bad usage or input,
3 the kernel died, 4 a cell timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from typing import Any

from .._errors import UsageError
from ..agent.settings import guard_setting
from ..sizes import MIN_MEMORY_LIMIT, format_size, parse_size

# The largest notebook read. Notebooks with every output embedded run to tens of MiB,
# rarely more than a hundred; parsing and validating one takes several times its size
# in memory, so a bigger file is a mistake (a data file, a disk image), not a notebook.
MAX_NOTEBOOK_SIZE = 512 * 1024**2


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words: 'a directory', 'a named pipe (FIFO)'..."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="the .ipynb file to execute")
    parser.add_argument("--output", "-o", metavar="PATH", help="write the executed notebook here")
    parser.add_argument(
        "--inplace", action="store_true", help="allow --output to be the input notebook"
    )
    parser.add_argument("--timeout", metavar="SECONDS", help="per-cell timeout")
    parser.add_argument(
        "--start-timeout",
        metavar="SECONDS",
        help="how long the kernel may take to start (default 60, as nbclient's)",
    )
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
        "--checkpoint",
        action="store_true",
        help="checkpoint the variables as cells run, so that --resume can go on after a death",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="after a death: restore the variables an earlier --checkpoint run of this "
        "notebook saved, and run only the cells after them (checkpointing again)",
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
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show the report's evidence and full paths too",
    )


def _not_a_notebook_file(path: str, mode: int) -> UsageError:
    return UsageError(f"{path!r} is {_file_kind(mode)}, not a notebook; give a regular .ipynb file")


def _too_large(path: str, size: int) -> UsageError:
    return UsageError(
        f"notebook {path!r} is {format_size(size)}, more than the "
        f"{format_size(MAX_NOTEBOOK_SIZE)} kernel-doctor reads; is it really a notebook?"
    )


def _read_text(path: str) -> str:
    """The notebook's text: a regular file (a symlink to one is fine) of at most
    MAX_NOTEBOOK_SIZE, read as UTF-8. A FIFO or device is refused before it is read
    (and a FIFO swapped in after the first look cannot block: it is opened
    O_NONBLOCK and refused by fstat before any read)."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # refuse devices before opening them at all
            raise _not_a_notebook_file(path, mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _not_a_notebook_file(path, info.st_mode)
            if info.st_size > MAX_NOTEBOOK_SIZE:
                raise _too_large(path, info.st_size)
            data = f.read(MAX_NOTEBOOK_SIZE + 1)  # it may have grown since fstat
        if len(data) > MAX_NOTEBOOK_SIZE:
            raise _too_large(path, len(data))
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read notebook {path!r}: {exc}") from exc


def _read_notebook(path: str) -> Any:
    import nbformat

    if not os.path.exists(path):
        raise UsageError(f"notebook {path!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{path!r} is a directory, not a notebook")
    text = _read_text(path)
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
        nb = nbformat.reads(text, as_version=4)
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


def _timeout(text: str | None, flag: str = "--timeout") -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{flag} must be a positive number of seconds, not {text!r}")
    return value


def _memory_limit(text: str | None) -> int | None:
    if text is None:
        return None
    limit = parse_size(text)  # one line naming the forms it reads, if unreadable
    if limit < MIN_MEMORY_LIMIT:
        need = format_size(MIN_MEMORY_LIMIT)  # "64 MiB"
        raise UsageError(
            f"--memory-limit {text!r} is below the {need} a kernel needs to start; "
            f"give at least {MIN_MEMORY_LIMIT // 1024**2}M"
        )
    return limit


def _check_writable(flag: str, path: str) -> None:
    """Refuse, before anything runs, an output that could not be written after it:
    its folder must exist and be writable, and whatever is already at ``path`` must be
    a writable regular file. Looks only; creates and truncates nothing."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a directory; give a file name")
    if os.path.basename(path) in ("", ".", ".."):  # "out/", "out/.": a folder's name
        raise UsageError(f"{flag} {path!r} names a directory, not a file; give a file name")
    try:
        mode: int | None = os.stat(path).st_mode  # follows a symlink to its target
    except OSError:
        mode = None  # nothing there (yet): the folder decides
    if mode is not None and not stat.S_ISREG(mode):
        if flag == "--report-json" and (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            # /dev/stdout, a pipe: written into, never replaced (reports.store.write_json)
            if not os.access(path, os.W_OK):
                raise UsageError(f"{flag} {path!r} is not writable; give another file")
            return
        raise UsageError(f"{flag} {path!r} is {_file_kind(mode)}; give a regular file name")
    # A symlink is written through: its target's folder is the one that must exist.
    real = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)
    directory = os.path.dirname(real)
    if not os.path.isdir(directory):
        raise UsageError(f"{flag} {path!r}: the directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK):
        raise UsageError(f"{flag} {path!r}: the directory {directory!r} is not writable")
    if mode is not None and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path!r} exists and is not writable; give another file")


def _guard(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return guard_setting(text)  # the reader %doctor guard and the supervisor use
    except ValueError as exc:
        raise UsageError(f"--guard: {exc}") from None


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    # Check every input before anything starts, so bad input costs nothing.
    nb = _read_notebook(args.notebook)
    timeout = _timeout(args.timeout)
    start_timeout = _timeout(args.start_timeout, "--start-timeout")
    limit = _memory_limit(args.memory_limit)
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
    from rich.text import Text

    from ..batch import describe_limit, run_notebook
    from ..probe.create import make_limited_cgroup
    from ..reports.render import render
    from ..reports.store import write_json

    cgroup = make_limited_cgroup(limit) if limit is not None else None
    err = Console(stderr=True, highlight=False)

    def log(text: str, style: str = "dim") -> None:
        # One line each, never wrapped: a wrap at the terminal's width broke a
        # sentence in two. Text, not markup: the notebook's name is the user's.
        err.print(Text(f"kernel-doctor: {text}", style=style), soft_wrap=True)

    log(f"running {args.notebook} on kernel {kernel!r} {describe_limit(cgroup)}", style="")
    result = run_notebook(
        nb,
        kernel_name=kernel,
        cwd=os.path.dirname(os.path.abspath(args.notebook)),
        timeout=timeout,
        start_timeout=start_timeout,
        cgroup=cgroup,
        allow_errors=args.allow_errors,
        guard=guard,
        log=log,
        notebook_path=os.path.abspath(args.notebook),
        resume_run=args.resume,
        checkpoint=args.checkpoint,
    )
    if args.output:
        import nbformat

        nbformat.write(result.notebook, args.output)
    # Shown first: a report that then cannot be written (a full disk) must not hide it.
    render(result.report, Console(file=sys.stdout), verbose=args.verbose)
    if args.report_json:
        write_json(args.report_json, result.report)
    return int(result.exit_code)
