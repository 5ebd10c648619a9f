"""The human rendering of a report, with rich."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.text import Text

from ..sizes import format_size

BARS = " ▁▂▃▄▅▆▇█"
STYLE = {"ok": "green", "cell_error": "yellow", "kernel_died": "red", "timeout": "magenta"}


def sparkline(timeline: list[list[float]], limit: int | None, width: int = 60) -> str:
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


def frame_label(frame: dict[str, Any]) -> str:
    if frame.get("cell_index") is not None:
        return f"cell {frame['cell_index']}"
    if frame.get("execution_count") is not None:
        return f"cell [{frame['execution_count']}]"
    return str(frame.get("file"))


def render(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    outcome = report.get("outcome", "?")
    parts: list[Any] = [Text(report.get("summary") or "", style="bold")]
    cell = report.get("cell")
    line = report.get("line")
    if cell and cell.get("source"):
        index = cell.get("index")
        title = f"cell {index}" if index is not None else "cell"
        if cell.get("execution_count") is not None:
            title += f" [{cell['execution_count']}]"
        parts.append(Text(f"\n{title}" + (f", line {line}" if line else ""), style="dim"))
        parts.append(
            Syntax(
                cell["source"],
                "python",
                line_numbers=True,
                highlight_lines={line} if line else set(),
                word_wrap=True,
            )
        )
    memory = report.get("memory") or {}
    if memory.get("timeline"):
        limit = memory.get("limit_bytes")
        parts.append(
            Text(
                f"\nmemory: peak {format_size(memory.get('peak_bytes'))} of "
                f"{format_size(limit)} ({memory.get('limit_source')})",
                style="dim",
            )
        )
        parts.append(Text(sparkline(memory["timeline"], limit), style="cyan"))
    stack = report.get("stack") or []
    if len(stack) > 1 or (stack and stack[-1].get("function") != "<module>"):
        parts.append(Text("\nstack (innermost last)", style="dim"))
        for frame in stack[-8:]:
            where = frame_label(frame)
            parts.append(Text(f"  {frame.get('function')}  {where}, line {frame.get('line')}"))
    if report.get("evidence"):
        parts.append(Text("\nevidence", style="dim"))
        parts.extend(Text(f"  • {fact}") for fact in report["evidence"])
    if report.get("advice"):
        parts.append(Text("\nwhat to do", style="dim"))
        parts.extend(Text(f"  → {tip}", style="green") for tip in report["advice"])
    tail = (report.get("stderr_tail") or "").strip()
    if tail and report.get("cause") in ("native_crash", "startup_failure", "stack_overflow"):
        parts.append(Text("\nstderr (last lines)", style="dim"))
        parts.append(Text("\n".join(tail.splitlines()[-12:])))
    title = f"kernel-doctor: {outcome}" + (f" ({report['cause']})" if report.get("cause") else "")
    console.print(Panel(Group(*parts), title=title, border_style=STYLE.get(outcome, "white")))
