"""What a user can do about each cause."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..evidence import Evidence, Frame
from ..sizes import format_size
from .facts import last_dump_recursion, oom_share
from .stacks import user_frames

_STDLIB = re.compile(r"/lib/python3\.\d+/([A-Za-z_][A-Za-z0-9_]*)")


def _native_module(stack: Sequence[Frame], stderr: str) -> str | None:
    """The package whose code ran innermost below the cell: an installed package, or
    a standard-library module such as ctypes. The kernel's own machinery above the
    cell (IPython, ipykernel) is never the answer."""
    for frame in reversed(user_frames(tuple(stack))):
        if "site-packages/" in frame.file:
            return frame.file.split("site-packages/", 1)[1].split("/", 1)[0]
        found = _STDLIB.search(frame.file)
        if found:
            return found.group(1)
    return None


def advise(cause: str, ev: Evidence, stack: Sequence[Frame]) -> list[str]:
    mem = ev.memory
    limit = mem.limit
    if cause == "out_of_memory":
        recursing = last_dump_recursion(ev)
        if recursing is not None:
            return [
                f"{recursing}() recursed until its frames filled memory: add or fix its base "
                "case, or rewrite it as a loop; a raised sys.setrecursionlimit removes the "
                "RecursionError that would have stopped it.",
            ]
        tips = [
            "Process the data in chunks (e.g. pandas.read_csv(chunksize=…), "
            "itertools.islice, dask), use smaller dtypes, and `del` large objects you no "
            "longer need.",
        ]
        if limit is not None and limit.kind != "system":
            tips.append(
                f"Or raise the limit: {format_size(limit.limit_bytes)} is set by {limit.source} "
                "(e.g. the container's or the JupyterHub spawner's mem_limit)."
            )
        share = oom_share(ev)
        if share is not None and share < 0.7:
            tips.append(
                "Other processes under the same limit held most of the memory: shut down "
                "kernels you no longer use."
            )
        return tips
    if cause == "stack_overflow":
        return [
            "Recursion through C code (map, repr, pickle, …) overflowed the C stack; the "
            "recursion limit does not protect it. Rewrite the recursion as a loop, or lower "
            "sys.setrecursionlimit so Python raises RecursionError first.",
        ]
    if cause == "native_crash":
        module = _native_module(stack, ev.stderr_tail)
        where = f" ({module})" if module else ""
        return [
            f"This is a bug in a native extension{where}, not in your Python code: update it, "
            "and if it persists report it with the stack and stderr below.",
            "Re-running the same cell will most likely crash again; save your work first.",
        ]
    if cause == "exit":
        return [
            "Something in the cell ended the process (os._exit, a library calling exit()). "
            "Raise an exception instead if you meant to stop the cell.",
        ]
    if cause == "hang":
        return [
            "The cell was inside a C call that does not check for interrupts (a C loop, "
            "a blocking read without a timeout): only a restart stops it. Give blocking "
            "calls a timeout (sockets, database drivers, requests), or run such work in a "
            "subprocess or thread you can abandon.",
        ]
    if cause == "killed":
        return [
            "Another process, a person, or a job scheduler sent the signal. Check the "
            "scheduler's or container runtime's logs (e.g. `kubectl describe pod`, "
            "`journalctl`) for who stopped the kernel.",
        ]
    if cause == "startup_failure" and "Address already in use" in ev.stderr_tail:
        return [
            "Another process took one of the kernel's ports between the launcher choosing it "
            "and the kernel binding it (a known race in port selection): restart the kernel.",
        ]
    if cause == "startup_failure":
        return [
            "The kernel's environment is broken: fix the error above in the environment the "
            "kernelspec starts (e.g. `python -m pip install ipykernel` with that Python), then "
            "restart the kernel.",
        ]
    return ["Look at the evidence and stderr below; report it to kernel-doctor if it is unclear."]
