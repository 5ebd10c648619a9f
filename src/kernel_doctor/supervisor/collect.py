"""Gather everything a session left on disk into one ``Evidence``."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from typing import Any

from ..agent.layout import DUMPS, FATAL, STDERR, read_cells, read_state
from ..diagnosis.stacks import parse_faulthandler
from ..evidence import CellRun, Evidence, MemoryEvidence
from ..probe import procfs
from ..probe.base import MemoryLimit, MemorySource
from .sampler import Sampler
from .session import read_events, read_meta, read_samples

TIMELINE_POINTS = 500


def collect(
    directory: str,
    *,
    status: int | None,
    ended: float,
    requested: str | None,
    stderr_tail: str | None = None,
    source: MemorySource | None = None,
    sampler: Sampler | None = None,
    supervisor_lost: bool = False,
    meta: dict[str, Any] | None = None,
) -> Evidence:
    meta = meta or read_meta(directory)
    state = read_state(directory) or {}
    events = read_events(directory)
    records = read_cells(directory)
    samples = read_samples(directory)
    pid = int(meta.get("kernel_pid") or 0)

    exit_code = signum = None
    if status is not None:
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
        elif os.WIFEXITED(status):
            exit_code = os.WEXITSTATUS(status)

    limit = None
    if source is not None:
        limit = source.limit
    elif isinstance(meta.get("limit"), dict):
        lim = meta["limit"]
        limit = MemoryLimit(int(lim["limit_bytes"]), lim["kind"], lim["source"], lim.get("path"))
    oom_after = source.oom_kills() if source is not None else _oom_kills_at(limit)

    counted = [(t, c) for t, c, _ in samples]
    kernel_peak = max((k for _, _, k in samples), default=None)
    peak = max((c for _, c in counted), default=None)
    if sampler is not None:
        kernel_peak = max(kernel_peak or 0, sampler.peak_kernel) or None
        peak = max(peak or 0, sampler.peak_counted) or None
    before = meta.get("peak_before")
    if source is not None:
        recorded = source.peak()
        if isinstance(before, int) and recorded is not None and recorded <= before:
            recorded = None  # set before this kernel started
        # The cgroup's own high-water mark sees peaks between our samples (v1 may
        # show a little over the limit: kernel memory is charged there too).
        if recorded is not None and limit is not None and recorded <= limit.limit_bytes * 1.1:
            peak = max(peak or 0, recorded)

    started = float(meta.get("started") or 0.0)
    # The kernel log is stamped with CLOCK_MONOTONIC; a second of slack for the clocks.
    since = started - (time.time() - time.monotonic()) - 1.0 if started else 0.0
    kernel_log = tuple(procfs.kernel_log_lines(pid, since=since)) if pid else ()
    at_kill = rss_at_kill(kernel_log, pid)
    if at_kill is not None:
        # The OOM killer's own figure: right even when the fill outran our sampling.
        kernel_peak = max(kernel_peak or 0, at_kill)

    memory = MemoryEvidence(
        limit=limit,
        timeline=downsample(counted, TIMELINE_POINTS),
        peak_bytes=peak,
        kernel_peak_bytes=kernel_peak,
        kernel_last_bytes=samples[-1][2] if samples else None,
        oom_kills_before=meta.get("oom_kills_before"),
        oom_kills_after=oom_after,
        rlimits=meta.get("rlimits") or {},
    )
    if stderr_tail is None:
        stderr_tail = _read(os.path.join(directory, STDERR))
    return Evidence(
        kernel_argv=tuple(meta.get("kernel_argv") or ()),
        pid=pid,
        started=started,
        ended=ended,
        exit_code=exit_code,
        signal=signum,
        requested=requested,
        agent_ready=any(r.get("event") == "ready" for r in records),
        clean_exit=any(r.get("event") == "exit" for r in records),
        memory=memory,
        cells=ended_by_state(cells_from(records), state),
        state=state,
        dumps=tuple(_dumps(directory, events)),
        fatal=tuple(parse_faulthandler(_read(os.path.join(directory, FATAL)))),
        stderr_tail=stderr_tail,
        kernel_log=kernel_log,
        connection_file=meta.get("connection_file"),
        supervisor_lost=supervisor_lost,
        kernel_name=meta.get("kernel_name"),
        guard={
            **(meta.get("guard") or {}),
            "signals": sum(1 for e in events if e.get("event") == "guard"),
        },
        session_name=meta.get("session_name"),
        hang=_json(os.path.join(directory, "interrupt.json")),
    )


def _json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def cells_from(records: list[dict[str, Any]]) -> tuple[CellRun, ...]:
    cells: dict[int, CellRun] = {}
    for record in records:
        seq = record.get("seq")
        if not isinstance(seq, int):
            continue
        if record.get("event") == "start":
            cells[seq] = CellRun(
                seq=seq,
                execution_count=record.get("execution_count"),
                cell_id=record.get("cell_id"),
                source=str(record.get("source") or ""),
                started=float(record.get("t") or 0.0),
            )
        elif record.get("event") == "end" and seq in cells:
            old = cells[seq]
            cells[seq] = CellRun(
                seq=old.seq,
                execution_count=old.execution_count,
                cell_id=old.cell_id,
                source=old.source,
                started=old.started,
                ended=float(record.get("t") or 0.0),
                file=record.get("file"),
                error=record.get("error"),
            )
    return tuple(cells[k] for k in sorted(cells))


def ended_by_state(cells: tuple[CellRun, ...], state: dict[str, Any]) -> tuple[CellRun, ...]:
    """The agent writes a clean cell's end record a little late; its state record,
    not busy after that cell, already says the cell ended."""
    if cells and cells[-1].ended is None:
        last = cells[-1]
        if state.get("busy") is False and state.get("seq") == last.seq:
            t = state.get("t")
            ended = float(t) if isinstance(t, (int, float)) else last.started
            return (*cells[:-1], dataclasses.replace(last, ended=ended))
    return cells


_KILLED = re.compile(r"anon-rss:(\d+)kB, file-rss:(\d+)kB, shmem-rss:(\d+)kB")


def rss_at_kill(lines: tuple[str, ...], pid: int) -> int | None:
    """The victim's RSS from the kernel's "Killed process PID …" line, in bytes."""
    for line in lines:
        if f"Killed process {pid} " in line:
            found = _KILLED.search(line)
            if found:
                return sum(int(v) for v in found.groups()) * 1024
    return None


def downsample(points: list[tuple[float, int]], limit: int) -> tuple[tuple[float, int], ...]:
    """At most ``limit`` points, keeping the peak of each stretch (and the last point)."""
    if len(points) <= limit or limit < 2:
        return tuple((round(t, 3), c) for t, c in points[-max(limit, 0) :] if limit > 0)
    size = len(points) / (limit - 1)
    out = []
    for i in range(limit - 1):
        chunk = points[int(i * size) : max(int((i + 1) * size), int(i * size) + 1)]
        t, c = max(chunk, key=lambda p: p[1])
        out.append((round(t, 3), c))
    out.append((round(points[-1][0], 3), points[-1][1]))
    return tuple(out)


def _dumps(directory: str, events: list[dict[str, Any]]) -> list[Any]:
    # The events record byte offsets into the file: split the bytes, then decode.
    try:
        with open(os.path.join(directory, DUMPS), "rb") as f:
            data = f.read()
    except OSError:
        return []
    if not data:
        return []
    offsets = sorted({int(e.get("offset") or 0) for e in events if e.get("event") == "dump"})
    if not offsets or offsets[0] != 0:
        offsets.insert(0, 0)
    parts = []
    for i, start in enumerate(offsets):
        end = offsets[i + 1] if i + 1 < len(offsets) else len(data)
        chunk = data[start:end].decode(errors="replace")
        threads = parse_faulthandler(chunk)
        if threads:
            parts.append(tuple(threads))
    return parts


def _oom_kills_at(limit: MemoryLimit | None) -> int | None:
    from ..probe.base import parse_keyed, read_text

    if limit is None or limit.path is None:
        return None
    name = "memory.oom_control" if limit.kind == "cgroup-v1" else "memory.events"
    return parse_keyed(read_text(os.path.join(limit.path, name))).get("oom_kill")


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""
