"""The human rendering of a report, with rich.

Every string from a report goes through ``printable``: a report is a file, and rich
passes terminal escape sequences in a ``Text`` through to the terminal as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

from ..agent.naming import cell_place, frame_place
from ..agent.private import printable
from ..sizes import format_size
from .model import Report

BARS = " ▁▂▃▄▅▆▇█"
STYLE = {"ok": "green", "cell_error": "yellow", "kernel_died": "red", "timeout": "magenta"}


def sparkline(timeline: Sequence[Sequence[float]], limit: int | None, width: int = 60) -> str:
    """Memory over time as one line of block characters, scaled to the limit."""
    if not timeline:
        return ""
    values = [v for _, v in timeline]
    top = max(limit or 0, max(values), 1)
    step = max(1, len(values) / width)
    picked = [
        max(values[int(i * step) : int((i + 1) * step)] or [0])
        for i in range(min(width, len(values)))
    ]
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))] for v in picked)


def render(report: Report | Mapping[str, Any], console: Console | None = None) -> None:
    """Print ``report`` as a panel. A JSON report (``run``'s, made in this process)
    is read with ``Report.from_json`` first."""
    if not isinstance(report, Report):
        report = Report.from_json(dict(report))
    console = console or Console()
    parts: list[Any] = [Text(printable(report.summary), style="bold")]
    cell, line = report.cell, report.line
    if cell is not None and cell.source:
        title = cell_place(cell.execution_count, cell.index, line, unknown="the cell")
        parts.append(Text(f"\n{title}", style="dim"))
        parts.append(
            Syntax(
                printable(cell.source, newlines=True),
                "python",
                line_numbers=True,
                highlight_lines={line} if line else set(),
                word_wrap=True,
            )
        )
    memory = report.memory
    if memory.timeline:
        limit = memory.limit_bytes
        parts.append(
            Text(
                f"\nmemory: peak {format_size(memory.peak_bytes)} of "
                f"{format_size(limit)} ({printable(str(memory.limit_source))})",
                style="dim",
            )
        )
        parts.append(Text(sparkline(memory.timeline, limit), style="cyan"))
    stack = report.stack
    if len(stack) > 1 or (stack and stack[-1].function != "<module>"):
        parts.append(Text("\nstack (innermost last)", style="dim"))
        for frame in stack[-8:]:
            where = frame_place(frame.file, frame.line, frame.execution_count, frame.cell_index)
            parts.append(Text(f"  {printable(frame.function)}  {printable(where)}"))
    if report.evidence:
        parts.append(Text("\nevidence", style="dim"))
        parts.extend(Text(f"  • {printable(fact)}") for fact in report.evidence)
    if report.advice:
        parts.append(Text("\nwhat to do", style="dim"))
        parts.extend(Text(f"  → {printable(tip)}", style="green") for tip in report.advice)
    tail = (report.stderr_tail or "").strip()
    if tail and report.cause in ("native_crash", "startup_failure", "stack_overflow"):
        parts.append(Text("\nstderr (last lines)", style="dim"))
        parts.append(Text(printable("\n".join(tail.splitlines()[-12:]), newlines=True)))
    outcome = printable(report.outcome)
    cause = f" ({printable(report.cause)})" if report.cause else ""
    heading = Text(f"kernel-doctor: {outcome}{cause}")  # a Text: a str title is markup
    console.print(Panel(Group(*parts), title=heading, border_style=STYLE.get(outcome, "white")))
