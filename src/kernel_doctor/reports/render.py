"""The human rendering of a report, with rich: what happened and what to do first;
the evidence and full paths behind ``--verbose``.

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

from ..agent.naming import cell_place, frame_place, short_paths
from ..agent.private import printable
from ..sizes import format_size
from .model import Report

BARS = " ▁▂▃▄▅▆▇█"
STYLE = {
    "ok": "green",
    "cell_error": "yellow",
    "child_died": "red",
    "kernel_died": "red",
    "timeout": "magenta",
}
# Deaths whose stderr is shown without --verbose: the advice points at it ("report it
# with the stack and stderr below"), or it is all there is.
TAIL_CAUSES = ("native_crash", "startup_failure", "stack_overflow", "unknown")


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


def sparkline_scale(timeline: Sequence[Sequence[float]], limit: int | None) -> str:
    """What the sparkline's height and width stand for: "0–512 MiB over 5.3 s"."""
    if not timeline:
        return ""
    top = max(limit or 0, max(v for _, v in timeline), 1)
    return f"0–{format_size(int(top))} over {format_duration(timeline[-1][0])}"


def format_duration(seconds: float) -> str:
    """'5.3 s', '42 s', '3 min 20 s', '2 h 5 min'."""
    if seconds < 10:
        return f"{max(seconds, 0):.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def render(
    report: Report | Mapping[str, Any], console: Console | None = None, *, verbose: bool = False
) -> None:
    """Print ``report`` as a panel: what happened and what to do first, then the cell,
    memory and stack; the evidence, the stderr of a death that needs none, and full
    paths only ``verbose``, with one line saying how to see them. A JSON report
    (``run``'s, made in this process) is read with ``Report.from_json`` first."""
    if not isinstance(report, Report):
        report = Report.from_json(dict(report))
    console = console or Console()

    shortened = False

    def human(text: str) -> str:
        nonlocal shortened
        short = text if verbose else short_paths(text)
        shortened = shortened or short != text
        return printable(short)

    parts: list[Any] = [Text(human(report.summary), style="bold")]
    if report.advice:
        parts.append(Text("\nwhat to do", style="dim"))
        parts.extend(Text(f"  → {human(tip)}", style="green") for tip in report.advice)
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
                f"{format_size(limit)} ({human(str(memory.limit_source))})",
                style="dim",
            )
        )
        parts.append(
            Text.assemble(
                (sparkline(memory.timeline, limit), "cyan"),
                (f"  {sparkline_scale(memory.timeline, limit)}", "dim"),
            )
        )
    stack = report.stack
    if len(stack) > 1 or (stack and stack[-1].function != "<module>"):
        parts.append(Text("\nstack (innermost last)", style="dim"))
        for frame in stack[-8:]:
            where = frame_place(frame.file, frame.line, frame.execution_count, frame.cell_index)
            parts.append(Text(f"  {printable(frame.function)}  {human(where)}"))
    tail = (report.stderr_tail or "").strip()
    show_tail = tail and (verbose or report.cause in TAIL_CAUSES)
    if verbose and report.evidence:
        parts.append(Text("\nevidence", style="dim"))
        parts.extend(Text(f"  • {printable(fact)}") for fact in report.evidence)
    if show_tail:
        parts.append(Text("\nstderr (last lines)", style="dim"))
        parts.append(Text(printable("\n".join(tail.splitlines()[-12:]), newlines=True)))
    if not verbose and (report.evidence or (tail and not show_tail) or shortened):
        how = f"kernel-doctor show {report.id} --verbose" if report.id else "add --verbose"
        parts.append(Text(f"\nthe evidence and full paths: {printable(how)}", style="dim"))
    outcome = printable(report.outcome)
    cause = f" ({printable(report.cause)})" if report.cause else ""
    heading = Text(f"kernel-doctor: {outcome}{cause}")  # a Text: a str title is markup
    console.print(Panel(Group(*parts), title=heading, border_style=STYLE.get(outcome, "white")))
