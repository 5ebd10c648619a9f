"""The memory guard's in-kernel half: stop the growing cell with a MemoryError.

The supervisor watches memory against the limit; when the running cell grows it past
the guard threshold, it writes what it saw to ``guard.json`` in the session and sends
the guard signal. The handler here runs in the main thread between two bytecodes of
the cell and raises ``KernelDoctorMemoryError`` there: the cell stops, the kernel and
its variables stay. Standard library only, like the rest of the agent.

The allocation layer's refusals are recognised here (``allocation_refusal``); its
in-kernel half, which keeps the ceiling the kernel's alone and lets threads start, is
``agent/ceiling.py``.
"""

from __future__ import annotations

import itertools
import re
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from .ceiling import data_limit, keep_children_limit, mapped
from .protocol import (
    GuardStop,
    guard_signal,
    last_sample,
    read_guard_trip,
    read_meta,
)

# Measuring the namespace must never be what makes a stopped cell slow.
SIZE_BUDGET = 0.05  # seconds
SAMPLE_ITEMS = 200  # elements measured per container; the rest estimated from them


class KernelDoctorMemoryError(MemoryError):
    """Raised in a cell whose growth took memory past the guard threshold."""

    def __init__(self, message: str, guard: dict[str, Any]) -> None:
        super().__init__(message)
        self.guard = guard

    def __getattr__(self, name: str) -> Any:
        # IPython renders an exception with ``_render_traceback_`` when it has one: this
        # one has it only when the agent's signal handler is its innermost frame, so that
        # the user's traceback ends in their own code. (``__tracebackhide__`` cannot hide
        # the innermost frame.)
        if name == "_render_traceback_" and _raised_by_handler(self):
            return lambda: _without_handler(self)
        raise AttributeError(name)


def _raised_by_handler(error: BaseException, handler_file: str = __file__) -> bool:
    """``error``'s innermost frame is in ``handler_file`` (a signal handler's module)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename == handler_file


def _without_handler(error: BaseException, inner: int = 1) -> list[str]:
    """The traceback IPython would show, less its ``inner`` innermost frames."""
    import traceback
    import types

    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    rebuilt: types.TracebackType | None = None
    for node in reversed(frames[: len(frames) - inner]):
        rebuilt = types.TracebackType(rebuilt, node.tb_frame, node.tb_lasti, node.tb_lineno)
    try:
        from IPython.core import getipython

        # Through Any: IPython 8 leaves get_ipython untyped, IPython 9 types it Optional.
        module: Any = getipython
        shell = module.get_ipython()
        lines: list[str] = shell.InteractiveTB.structured_traceback(type(error), error, rebuilt)
        return lines
    except Exception:
        return traceback.format_exception(type(error), error, rebuilt)


def _size(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)  # NumPy arrays, many array libraries
    if isinstance(nbytes, int):
        return nbytes
    usage = getattr(value, "memory_usage", None)  # pandas
    if callable(usage) and type(value).__module__.startswith("pandas"):
        try:
            total = usage(deep=False)
            return int(total.sum() if hasattr(total, "sum") else total)
        except Exception:
            return sys.getsizeof(value)
    size = sys.getsizeof(value)
    if isinstance(value, (list, tuple, set, frozenset, dict)) and value:
        # A sample, never a copy: this runs when memory is nearly gone, and a copy of
        # a ten-million-item container was the allocation that killed the kernel
        # (benchmarks/guard.py: list-growth at 512 MiB, py-strings at 4 GiB).
        values = value.values() if isinstance(value, dict) else value
        sample = list(itertools.islice(values, SAMPLE_ITEMS))
        inner = sum(_shallow(v) for v in sample)
        size += inner * len(value) // len(sample)
    return size


def _shallow(value: Any) -> int:
    nbytes = getattr(value, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else sys.getsizeof(value)


def biggest_variables(
    namespace: dict[str, Any], hidden: Any = (), count: int = 3
) -> list[tuple[str, int]]:
    """The largest user variables, measured within SIZE_BUDGET (estimates past it);
    IPython's own names (``hidden``: In, Out, exit…) are not the user's."""
    deadline = time.monotonic() + SIZE_BUDGET
    sizes = []
    for name, value in list(namespace.items()):
        if name.startswith("_") or name in hidden or callable(value):
            continue
        if type(value).__name__ == "module":
            continue
        if time.monotonic() > deadline:
            break
        try:
            sizes.append((name, _size(value)))
        except Exception:
            continue
    return sorted(sizes, key=lambda item: item[1], reverse=True)[:count]


def format_bytes(num: float | None) -> str:
    """Like kernel_doctor.sizes.format_size, which the agent cannot import (it is
    loaded by path into kernels whose Python may lack kernel-doctor)."""
    if num is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num) < 1024:
            return f"{num:.0f} {unit}" if unit == "B" or num >= 10 else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TiB"


def message(guard: dict[str, Any], where: str, variables: list[tuple[str, int]]) -> str:
    usage, limit = guard.get("usage_bytes") or 0, guard.get("limit_bytes") or 0
    parts = [
        f"kernel-doctor's memory guard stopped this cell{where}: it took memory to "
        f"{format_bytes(usage)} of the {format_bytes(limit)} limit "
        f"({guard.get('limit_source')}), past the guard at {guard.get('threshold_text')}."
    ]
    if variables:
        listed = ", ".join(f"{name} ({format_bytes(size)})" for name, size in variables)
        parts.append(f"Biggest variables: {listed}.")
    parts.append(
        "The kernel and its variables are intact: free what you no longer need (del …) "
        "or work in smaller pieces, then go on."
    )
    return " ".join(parts)


# PyTorch's CPU allocator raises RuntimeError, not MemoryError: "DefaultCPUAllocator:
# can't allocate memory: you tried to allocate 17179869184 bytes."
_TORCH_FAILURE = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")


def is_allocation_failure(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and _TORCH_FAILURE.search(str(error)) is not None


def _request(error: BaseException) -> int | None:
    size = getattr(error, "_total_size", None)  # NumPy's _ArrayMemoryError
    if isinstance(size, int):
        return size
    match = _TORCH_FAILURE.search(str(error)) if isinstance(error, RuntimeError) else None
    return int(match.group(1)) if match else None


def allocation_refusal(agent: Any, error: BaseException) -> GuardStop | None:
    """The guard's record when ``error`` is a MemoryError from the allocation layer:
    the supervisor's ceiling (RLIMIT_DATA) was in force and the request did not fit."""
    original = getattr(agent, "data_limit", None)
    ceiling = data_limit()
    if original is None or ceiling is None or ceiling == original:
        return None  # no ceiling of ours: an ordinary MemoryError
    request = _request(error)
    if request is not None and (mapped() or 0) + request <= ceiling:
        return None  # it fitted under the ceiling: refused by something else
    meta = read_meta(agent.session_dir)
    limit = meta.limit if meta is not None else None
    sample = last_sample(agent.session_dir)
    return GuardStop(
        tripped=True,
        layer="allocation",
        usage_bytes=sample.counted if sample else None,
        limit_bytes=limit.limit_bytes if limit else None,
        limit_source=limit.source if limit else None,
        request_bytes=request,
        ceiling_bytes=ceiling,
    )


def refusal_note(guard: GuardStop) -> str:
    """Printed under the MemoryError's traceback, which is the allocator's own."""
    usage, limit = guard.get("usage_bytes"), guard.get("limit_bytes")
    request = guard.get("request_bytes")
    what = f"this allocation ({format_bytes(request)})" if request else "this allocation"
    left = format_bytes(max(0, limit - usage)) if limit and usage is not None else "unknown"
    return (
        f"kernel-doctor's memory guard refused {what} at once: the "
        f"{format_bytes(limit)} limit ({guard.get('limit_source')}) leaves {left}, with "
        f"{format_bytes(usage)} in use. The kernel and its variables are intact: work "
        "in smaller pieces (chunks, dtype=float32, memory-mapped files), then go on.\n"
    )


def install(agent: Any) -> None:
    """Install the handler; the supervisor checks SigCgt before it signals."""
    keep_children_limit(agent)  # RLIMIT_DATA: the ceiling is the kernel's alone

    def handler(signum: int, frame: FrameType | None) -> None:
        trip = read_guard_trip(agent.session_dir)
        cell = agent._cell
        if trip is None or cell is None or trip["seq"] != cell.get("seq") or frame is None:
            return  # the cell it was meant for is over
        thread = agent.cell_thread
        elsewhere = thread is not None and thread != threading.main_thread().ident
        if elsewhere:  # a subshell's cell: Python runs signal handlers in the main thread
            frame = sys._current_frames().get(thread)
            if frame is None:
                return
        cell_frame = agent._find_cell_frame(frame, 10_000)
        if cell_frame is None:
            return  # not in the cell's own code (IPython's machinery): next time
        line = cell_frame.f_lineno
        count = cell.get("execution_count")
        where = f" (In [{count}], line {line})" if count is not None else ""
        guard: dict[str, Any] = {**trip, "tripped": True, "layer": "threshold"}
        guard.pop("seq", None)
        text = message(
            guard,
            where,
            biggest_variables(agent.shell.user_ns, getattr(agent.shell, "user_ns_hidden", ())),
        )
        if elsewhere:
            _raise_in_thread(thread, text, guard)
            return
        raise KernelDoctorMemoryError(text, guard)

    signal.signal(guard_signal(), handler)


def _raise_in_thread(thread: int, text: str, guard: dict[str, Any]) -> None:
    """Raise KernelDoctorMemoryError in another thread at its next bytecode. CPython
    raises an asynchronous exception by calling its class with no arguments, so the
    message travels in a one-off subclass of the same name."""
    import ctypes

    def init(self: KernelDoctorMemoryError) -> None:
        KernelDoctorMemoryError.__init__(self, text, guard)

    carrier = type(
        "KernelDoctorMemoryError",
        (KernelDoctorMemoryError,),
        {"__init__": init, "__module__": KernelDoctorMemoryError.__module__},
    )
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(carrier))
