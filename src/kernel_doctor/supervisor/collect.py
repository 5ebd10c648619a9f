"""Gather everything a session left on disk into one ``Evidence``."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any

from ..agent.private import read_private
from ..agent.protocol import (
    DUMPS,
    FATAL,
    INTERRUPT,
    STDERR,
    CellRecord,
    Event,
    Meta,
    State,
    read_cells,
    read_events,
    read_look,
    read_meta,
    read_samples,
    read_state,
    read_text,
)
from ..diagnosis.stacks import parse_faulthandler
from ..evidence import CellRun, Evidence, MemoryEvidence
from ..probe import procfs
from ..probe.base import MemoryLimit, MemorySource
from .sampler import Sampler

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
    meta: Meta | None = None,
) -> Evidence:
    meta = meta or read_meta(directory)
    state = read_state(directory) or State()
    events = read_events(directory)
    records = read_cells(directory)
    samples = read_samples(directory)
    pid = meta.kernel_pid if meta else 0

    exit_code = signum = None
    if status is not None:
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
        elif os.WIFEXITED(status):
            exit_code = os.WEXITSTATUS(status)

    limit = None
    if source is not None:
        limit = source.limit
    elif meta is not None and meta.limit is not None:
        lim = meta.limit
        limit = MemoryLimit(lim.limit_bytes, lim.kind, lim.source, lim.path)
    oom_after = source.oom_kills() if source is not None else _oom_kills_at(limit)

    counted = [(t, c) for t, c, _ in samples]
    kernel_peak = max((k for _, _, k in samples), default=None)
    peak = max((c for _, c in counted), default=None)
    if sampler is not None:
        kernel_peak = max(kernel_peak or 0, sampler.peak_kernel) or None
        peak = max(peak or 0, sampler.peak_counted) or None
    before = meta.peak_before if meta else None
    if source is not None:
        recorded = source.peak()
        if before is not None and recorded is not None and recorded <= before:
            recorded = None  # set before this kernel started
        # The cgroup's own high-water mark sees peaks between our samples (v1 may
        # show a little over the limit: kernel memory is charged there too).
        if recorded is not None and limit is not None and recorded <= limit.limit_bytes * 1.1:
            peak = max(peak or 0, recorded)

    started = meta.started if meta else 0.0
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
        oom_kills_before=meta.oom_kills_before if meta else None,
        oom_kills_after=oom_after,
        rlimits=dict(meta.rlimits) if meta else {},
    )
    if stderr_tail is None:
        stderr_tail = read_text(directory, STDERR)
    return Evidence(
        kernel_argv=meta.kernel_argv if meta else (),
        pid=pid,
        started=started,
        ended=ended,
        exit_code=exit_code,
        signal=signum,
        requested=requested,
        agent_ready=any(r.event == "ready" for r in records),
        clean_exit=any(r.event == "exit" for r in records),
        memory=memory,
        cells=ended_by_state(cells_from(records), state),
        state=state,
        dumps=tuple(_dumps(directory, events)),
        fatal=tuple(parse_faulthandler(read_text(directory, FATAL))),
        stderr_tail=stderr_tail,
        kernel_log=kernel_log,
        connection_file=meta.connection_file if meta else None,
        supervisor_lost=supervisor_lost,
        kernel_name=meta.kernel_name if meta else None,
        guard={
            **(meta.guard.to_json() if meta and meta.guard else {}),
            "signals": sum(1 for e in events if e.kind == "guard"),
        },
        session_name=meta.session_name if meta else None,
        hang=read_look(os.path.join(directory, INTERRUPT)),
    )


def cells_from(records: list[CellRecord]) -> tuple[CellRun, ...]:
    cells: dict[int, CellRun] = {}
    for record in records:
        seq = record.seq
        if seq is None:
            continue
        if record.event == "start":
            cells[seq] = CellRun(
                seq=seq,
                execution_count=record.execution_count,
                cell_id=record.cell_id,
                source=record.source or "",
                started=record.t,
            )
        elif record.event == "end" and seq in cells:
            old = cells[seq]
            cells[seq] = CellRun(
                seq=old.seq,
                execution_count=old.execution_count,
                cell_id=old.cell_id,
                source=old.source,
                started=old.started,
                ended=record.t,
                file=record.file,
                error=record.error,
            )
    return tuple(cells[k] for k in sorted(cells))


def ended_by_state(cells: tuple[CellRun, ...], state: State) -> tuple[CellRun, ...]:
    """The agent writes a clean cell's end record a little late; its state record,
    not busy after that cell, already says the cell ended."""
    if cells and cells[-1].ended is None:
        last = cells[-1]
        if not state.busy and state.seq == last.seq:
            ended = state.t if state.t is not None else last.started
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


def _dumps(directory: str, events: list[Event]) -> list[Any]:
    # The events record byte offsets into the file: split the bytes, then decode.
    data = read_private(os.path.join(directory, DUMPS))
    if not data:
        return []
    offsets = sorted({e.offset or 0 for e in events if e.kind == "dump"})
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
