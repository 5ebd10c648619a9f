"""``kernel-doctor where [KERNEL]``: every thread's stack in a running supervised
kernel, with what each is doing at the OS level. No ptrace, no root: the agent and the
supervisor (the kernel's parent) do the looking."""

from __future__ import annotations

import argparse
import json
import sys

from ..agent.naming import frame_place, is_cell_file
from ..agent.private import printable
from ..agent.protocol import Frame, Look, OsThread
from ..diagnosis.hang import describe, source_line
from ..live import LiveKernel, live_kernels, look, pick


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "kernel",
        nargs="?",
        help="pid, session or part of the notebook's name (default: the busy one)",
    )
    parser.add_argument("--json", action="store_true", help="print the look as JSON")


def run(args: argparse.Namespace) -> int:
    kernel = pick(live_kernels(), args.kernel)
    reply = look(kernel)
    reply["label"] = kernel.label
    reply["summary"] = describe(reply)
    if args.json:
        sys.stdout.write(json.dumps(reply, indent=1) + "\n")
        return 0
    sys.stdout.write(render(reply, kernel))  # escaped there
    return 0


def render(reply: Look, kernel: LiveKernel | None = None) -> str:
    """Plain text that fits 80 columns (and pipes into a bug report)."""
    files = kernel.cell_files() if kernel is not None else {}
    cell = reply.get("cell")
    current = cell["execution_count"] if cell else None
    if reply.get("file") and current is not None:
        files[str(reply["file"])] = current
    out = [f"kernel {reply.get('kernel_pid')} ({reply.get('label', '-')})", reply["summary"]]
    ignored = reply.get("ignored_interrupt")
    if ignored and reply.get("busy"):
        out.append(describe(ignored, interrupt=True))
    os_threads = {t.get("tid"): t for t in reply.get("os_threads") or []}
    python = reply.get("python")
    stacks: list[tuple[int | None, str, list[Frame], int | None]]
    if python:
        stacks = [(t["native_id"], t["name"], t["frames"], t["depth"]) for t in python]
    else:
        stacks = [(reply.get("kernel_pid"), "MainThread", reply.get("main_dump") or [], None)]
        out.append("(only the main thread's stack: it holds the GIL, so no other thread ran)")
    for tid, name, frames, depth in stacks:
        os_state = os_threads.get(tid) or OsThread()
        doing = os_state.get("verdict", "")
        cpu = f", {os_state['cpu']:.0%} CPU" if "cpu" in os_state else ""
        out.append("")
        out.append(f"Thread {name} (tid {tid}){': ' + doing if doing else ''}{cpu}")
        if isinstance(depth, int) and depth > len(frames):
            out.append(f"  … {depth - len(frames):,} outer frames not shown")
        cell_at = next((i for i, f in enumerate(frames) if is_cell_file(str(f[0]))), None)
        if cell_at:  # the kernel's own machinery (ipykernel, IPython, asyncio) above it
            out.append(f"  … {cell_at} frames of the kernel's machinery")
            frames = frames[cell_at:]
        for frame in frames:
            path, line, function = str(frame[0]), frame[1], frame[2]
            number = line if isinstance(line, int) else None
            out.append(f"  {frame_place(path, number, files.get(path))}, in {function}")
            text = source_line(reply, list(frame))
            if text:
                out.append(f"      {text[:72]}")
    # Names and source lines come from the kernel's files: print them, never obey them.
    return printable("\n".join(out), newlines=True) + "\n"
