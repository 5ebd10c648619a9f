"""Children of the kernel that died while the kernel lived, in ``run``'s report.

The supervisor records each one in the session's ``children.jsonl`` as it happens
(``supervisor/children.py``); the cell was told at once (``agent/children.py``). Here
the run's report gains them: ``outcome: "child_died"``, the ``children`` list that
README's contract documents, and a summary and advice that say what died of what.
"""

from __future__ import annotations

from typing import Any

from ..agent.children import ChildDeath, note, read_child_deaths, read_roles, role
from ..agent.naming import capital, cell_place
from ..agent.protocol import started_cell


def child_deaths(session_dir: str) -> list[ChildDeath]:
    return read_child_deaths(session_dir)[0]


def children_json(deaths: list[ChildDeath], roles: dict[int, str]) -> list[dict[str, Any]]:
    """README's ``children``: one object per child that died."""
    return [
        {
            "pid": d.pid or None,
            "role": roles.get(d.pid) or role(d, None),
            "cause": d.cause,
            "signal": d.signal,
            "exit_code": None,  # killed or crashed: no exit code, a signal
            "rss_bytes": d.rss_bytes or None,
            "cell_seq": d.seq,
        }
        for d in deaths
    ]


def add_child_deaths(
    report: dict[str, Any], session_dir: str, cell_index: Any
) -> tuple[ChildDeath, int | None] | None:
    """Make ``report`` a child death's if a child died during the run: the first
    death and the notebook cell it died in (``cell_index(count)`` finds it), or None
    if none did."""
    deaths = child_deaths(session_dir)
    if not deaths:
        return None
    first = deaths[0]
    started = started_cell(session_dir, first.seq)
    count = started.execution_count if started else None
    index = cell_index(count)
    where = capital(cell_place(count, index, None, "while no cell ran"))
    roles = read_roles(session_dir)
    text = note(first, roles.get(first.pid) or role(first, None)).removeprefix("kernel-doctor: ")
    head, _, advice = text.partition("\n  → ")
    report["outcome"] = "child_died"
    report["cause"] = first.cause
    report["signal"] = first.signal
    report["children"] = children_json(deaths, roles)
    more = f" ({len(deaths) - 1} more died after it)" if len(deaths) > 1 else ""
    report["summary"] = f"{where}: {head[:1].lower()}{head[1:]}{more} The kernel lived on."
    report["advice"] = [advice.strip(), *report.get("advice", [])]
    return first, index


def child_report(death: ChildDeath, session_dir: str) -> Any:
    """The stored report of one child's death (``outcome: "child_died"``): what the
    history, ``show``, ``%doctor deaths`` and the server read. The kernel did not end:
    its ``kernel.ended`` is null."""
    import time

    from .. import __version__
    from ..agent.protocol import read_meta
    from ..reports.model import Cell, Kernel, Memory, Report

    meta = read_meta(session_dir)
    roles = read_roles(session_dir)
    what = roles.get(death.pid) or role(death, None)
    head, _, advice = note(death, what).removeprefix("kernel-doctor: ").partition("\n  → ")
    record = started_cell(session_dir, death.seq)
    cell = None
    if record is not None:
        cell = Cell(None, record.execution_count, record.cell_id, record.source or "")
    where = capital(cell_place(cell.execution_count if cell else None, None, None, "")).strip()
    summary = f"{where}: {head[:1].lower()}{head[1:]}" if where else capital(head)
    evidence = [f"the memory limit: {death.limit_source}"]
    if death.argv:
        evidence.append(f"its command line: {' '.join(death.argv)[:300]}")
    return Report(
        outcome="child_died",
        summary=f"{summary} The kernel lived on.",
        id=f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(death.t))}-{death.pid}",
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(death.t)),
        version=__version__,
        cause=death.cause,
        signal=death.signal,
        cell=cell,
        memory=Memory(
            peak_bytes=death.counted_bytes,
            limit_bytes=death.limit_bytes,
            limit_source=death.limit_source,
            limit_kind=death.limit_kind,
        ),
        evidence=tuple(evidence),
        advice=(advice.strip(),),
        kernel=Kernel(
            meta.kernel_pid,
            meta.kernel_argv,
            meta.connection_file,
            meta.kernel_name,
            meta.session_name,
            meta.started,
            None,
        )
        if meta
        else None,
        extra={"children": children_json([death], roles)},  # type: ignore[dict-item]
    )
