"""``%doctor``: kernel-doctor from inside the notebook.

    %doctor                  memory, the guard, and past deaths, in one answer
    %doctor memory           memory now against the limit, growth per cell, biggest variables
    %doctor guard [SETTING]  the memory guard's state; set it: 85%, 2G, off, on
    %doctor deaths           the stored death reports, newest first
    %doctor show [ID]        one report (default: the latest)

Standard library and IPython only, like the rest of the agent.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .guard import format_bytes
from .naming import cell_name, frame_place, short_paths
from .private import read_private
from .protocol import ENV_REPORTS, CellRecord, Sample, read_meta, read_samples
from .settings import guard_setting

USAGE = (
    "usage: %doctor [memory | guard [85%|2G|off|on] | deaths | show [ID] | "
    "restore [--recompute] [NAME…] | checkpoint [on|off]]"
)


def reports_dir() -> str | None:
    directory = os.environ.get(ENV_REPORTS)
    if directory:
        return directory
    try:  # loaded by hand: jupyter_core comes with every ipykernel
        from ..paths import reports_dir as stored

        return stored(create=False)
    except (ImportError, OSError):
        return None


def _reports(directory: str) -> list[dict[str, Any]]:
    try:
        names = sorted(
            (n for n in os.listdir(directory) if n.endswith(".json") and n[0] != "."),
            reverse=True,
        )
    except OSError:
        return []
    out = []
    for name in names:
        try:
            report = json.loads(read_private(os.path.join(directory, name)) or b"null")
        except (ValueError, RecursionError):
            continue
        if _readable(report):
            out.append(report)
    return out


def _readable(report: object) -> bool:
    """The fields the magics print have the report contract's types (the agent runs
    without kernel-doctor's report model, so it checks what it uses)."""
    if not isinstance(report, dict) or not isinstance(report.get("id"), str):
        return False
    kernel = report.get("kernel") or {}
    if not isinstance(kernel, dict) or not isinstance(kernel.get("ended") or 0, (int, float)):
        return False
    if not all(isinstance(report.get(k) or "", str) for k in ("cause", "summary")):
        return False
    for key in ("evidence", "advice", "stack"):
        items = report.get(key) or []
        wanted = dict if key == "stack" else str
        if not isinstance(items, list) or not all(isinstance(i, wanted) for i in items):
            return False
    return True


def doctor(line: str) -> None:
    """Shown as one output: HTML in the notebook, the same text where HTML is not."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        _doctor(line)
    text = buffer.getvalue().rstrip("\n")
    from IPython.display import display

    display({"text/plain": text, "text/html": to_html(text)}, raw=True)


def to_html(text: str) -> str:
    """Headings for unindented lines, lists for the indented ones under them."""
    from html import escape

    parts, in_list = ['<div class="kernel-doctor">'], False
    for line in text.splitlines():
        indented = line.startswith("  ")
        if indented and not in_list:
            parts.append("<ul>")
        elif not indented and in_list:
            parts.append("</ul>")
        in_list = indented
        item = escape(line.strip())
        parts.append(f"<li><code>{item}</code></li>" if indented else f"<p><b>{item}</b></p>")
    parts.append("</ul></div>" if in_list else "</div>")
    return "".join(parts)


def _doctor(line: str) -> None:
    words = line.split()
    if not words:
        memory()
        guard([])
        words = ["deaths"]
    elif words[0] == "memory":
        memory()
        return
    elif words[0] == "guard":
        guard(words[1:])
        return
    elif words[0] == "restore":
        restore(words[1:])
        return
    elif words[0] == "checkpoint":
        checkpoint(words[1:])
        return
    directory = reports_dir()
    if words[0] not in ("deaths", "show"):
        print(USAGE)
        return
    reports = _reports(directory) if directory else []
    if words[0] == "deaths":
        if not reports:
            print(f"No kernel deaths recorded (in {directory}).")
        for r in reports[:20]:
            ended = (r.get("kernel") or {}).get("ended")
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ended)) if ended else "?"
            cause = r.get("cause")
            if r.get("outcome") == "child_died":  # a worker's death; the kernel lived
                when = str(r.get("created") or "?")[:16].replace("T", " ")
                cause = f"worker {cause}"
            print(f"{r.get('id')}  {when}  {cause}: {r.get('summary')}")
        return
    wanted = words[1] if len(words) > 1 and words[1] != "latest" else None
    chosen = next((r for r in reports if wanted in (None, r.get("id"))), None)
    if chosen is None:
        print(f"No report {wanted or 'stored'}: `%doctor deaths` lists them.")
        return
    print(chosen.get("summary"))
    advice = chosen.get("advice") or []
    if advice:
        print("What to do:")
        for tip in advice:
            print(f"  → {tip}")
    frames = chosen.get("stack") or []
    if frames:
        print("Stack (innermost last):")
        for f in frames[-10:]:
            print(f"  {f.get('function')}  {_frame_place(f)}")
    evidence = chosen.get("evidence") or []
    if evidence:
        print("Evidence:")
        for fact in evidence:
            print(f"  • {fact}")


def _frame_place(frame: dict[str, Any]) -> str:
    """A stored frame's place ("In [3], line 3"): its fields as the report contract
    types them, anything else left out."""

    def number(key: str) -> int | None:
        value = frame.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    file = frame.get("file")
    return frame_place(
        file if isinstance(file, str) else "",
        number("line"),
        number("execution_count"),
        number("cell_index"),
    )


def register(shell: Any) -> None:
    shell.register_magic_function(doctor, magic_kind="line", magic_name="doctor")


def _agent() -> Any:
    from . import running_agent

    return running_agent()


def cell_growth(
    records: list[CellRecord], samples: list[Sample], started: float
) -> list[tuple[int | None, int]]:
    """(execution count, bytes the cell added and kept) per finished cell, from the
    supervisor's samples just before each cell started and just after it ended."""
    times = [(started + s.elapsed, s.counted) for s in samples]
    starts = {r.seq: r for r in records if r.event == "start" and r.seq is not None}
    out = []
    for record in records:
        start = starts.get(record.seq) if record.event == "end" and record.seq else None
        if start is None:
            continue
        before = [c for t, c in times if t <= start.t]
        after = [c for t, c in times if t >= record.t]
        if before and after:
            out.append((start.execution_count, after[0] - before[-1]))
    return out


def memory() -> None:
    agent = _agent()
    if agent is None:
        print("kernel-doctor's agent is not running in this kernel.")
        return
    from .guard import biggest_variables
    from .protocol import read_cells

    session = agent.session_dir
    meta, samples = read_meta(session), read_samples(session)
    limit = meta.limit if meta is not None else None
    if samples and limit is not None:
        _, counted, kernel = samples[-1]
        print(
            f"Memory: {format_bytes(counted)} of {format_bytes(limit.limit_bytes)} "
            f"({short_paths(limit.source)}); this kernel's processes {format_bytes(kernel)}."
        )
    else:
        print("Memory: no samples (this kernel is not supervised).")
    agent._flush()
    growth = cell_growth(read_cells(session), samples, meta.started if meta else 0.0)
    grew = sorted((g for g in growth if g[1] > 1024**2), key=lambda g: g[1], reverse=True)
    if grew:
        print("Cells that grew memory and kept it:")
        for count, added in grew[:10]:
            print(f"  {cell_name(count, None, 'a cell')}: +{format_bytes(added)}")
    shell = agent.shell
    variables = biggest_variables(shell.user_ns, getattr(shell, "user_ns_hidden", ()), 10)
    if variables:
        print("Biggest variables:")
        for name, size in variables:
            print(f"  {name}: {format_bytes(size)}")


def guard(words: list[str]) -> None:
    agent = _agent()
    if agent is None:
        print("kernel-doctor's agent is not running in this kernel.")
        return
    if words:
        try:
            setting = guard_setting(" ".join(words))  # the reader `run --guard` uses
        except ValueError as exc:
            print(f"%doctor guard: {exc}")
            return
        agent.set_guard(setting)
    meta = read_meta(agent.session_dir)
    described = meta.guard.threshold if meta is not None and meta.guard is not None else None
    current = agent.guard_setting or described or "off"
    if agent.dump_signal is None:
        print("Memory guard: off (this kernel is not supervised).")
    elif current == "off":
        print("Memory guard: off. `%doctor guard on` turns it back on (90% of the limit).")
    else:
        print(
            f"Memory guard: on at {current}: a cell whose growth passes it is stopped with "
            "a MemoryError, and the kernel keeps its variables."
        )


def restore(words: list[str]) -> None:
    agent = _agent()
    if agent is None:
        print("kernel-doctor's agent is not running in this kernel.")
        return
    from .restore import restore as restore_variables

    recompute = "--recompute" in words
    names = [w for w in words if w != "--recompute"]
    print(restore_variables(agent, names, recompute=recompute))


def checkpoint(words: list[str]) -> None:
    agent = _agent()
    checkpoints = getattr(agent, "checkpoints", None)
    if checkpoints is None:
        print(
            "Checkpoints are off in this kernel (KERNEL_DOCTOR_CHECKPOINT=off, or no "
            "supervisor): a restart of the kernel with them on turns them on."
        )
        return
    if words and words[0] in ("on", "off"):
        checkpoints.enabled = words[0] == "on"
    state = "on" if checkpoints.enabled else "off"
    print(f"Checkpoints: {state}; {checkpoints.status}.")
    last = checkpoints.last
    if last is not None:
        print(f"  {len(last.variables)} variables, {format_bytes(last.size)}, in {last.path}")
        for name, info in last.unsaved.items():
            print(f"  not saved: {name} ({info.get('type')}): {info.get('why')}")
