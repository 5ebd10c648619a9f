"""Line capture on fast OOMs: how often a report names the right cell, line and frame
when an allocation fills a 300 MB cgroup as fast as this machine can write memory.

Run twice: with cgroup-v1 usage events waking the supervisor at its marks, and with
sampling alone (``KERNEL_DOCTOR_EVENTS=0``), which is what cgroup-v2 users get.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from kernel_doctor.batch import run_notebook
from kernel_doctor.probe.create import make_limited_cgroup

LIMIT = 300 * 1024**2

# Each scenario: cells, and what a right report names: (cell index, line), and the
# innermost frame (cell index, line) where it is not the cell's own line.
SCENARIOS: dict[str, tuple[list[str], tuple[int, int], tuple[int, int] | None]] = {
    # bytearray(n) memsets n bytes: the limit fills at memory-write speed.
    "top-level memset": (["x = 1", "y = 2\ndata = bytearray(1 << 30)\nz = 3"], (1, 2), None),
    "inside a function": (
        ["def fill(n):\n    a = 1\n    return bytearray(n)\n", "y = 2\nfill(1 << 30)"],
        (1, 2),
        (0, 3),
    ),
}


@contextmanager
def _events(on: bool) -> Iterator[None]:
    # The guard off: these are deaths it would prevent (the allocation layer refuses a
    # 1 GiB bytearray under 300 MB), and what is measured is the report of a death.
    settings = {"KERNEL_DOCTOR_EVENTS": "1" if on else "0", "KERNEL_DOCTOR_GUARD": "off"}
    old = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def one_run(cells: list[str]) -> dict[str, Any]:
    nb = new_notebook()
    nb.cells = [new_code_cell(c) for c in cells]
    nbformat.validate(nb)
    cgroup = make_limited_cgroup(LIMIT)
    result = run_notebook(
        nb, kernel_name="python3", cwd=os.getcwd(), timeout=60, cgroup=cgroup, allow_errors=False
    )
    return result.report


def judge(report: dict[str, Any], where: tuple[int, int], inner: tuple[int, int] | None) -> bool:
    if report.get("cause") != "out_of_memory":
        return False
    if ((report.get("cell") or {}).get("index"), report.get("line")) != where:
        return False
    if inner is None:
        return True
    frames = report.get("stack") or []
    innermost = frames[-1] if frames else {}
    return (innermost.get("cell_index"), innermost.get("line")) == inner


def line_capture(runs: int) -> dict[str, dict[str, tuple[int, int]]]:
    """{mode: {scenario: (right, total)}}, modes alternating run by run."""
    results: dict[str, dict[str, tuple[int, int]]] = {"events": {}, "sampling only": {}}
    for name, (cells, where, inner) in SCENARIOS.items():
        for mode in results:
            results[mode][name] = (0, 0)
        for _ in range(runs):
            for mode in results:
                with _events(mode == "events"):
                    report = one_run(cells)
                right, total = results[mode][name]
                ok = judge(report, where, inner)
                if not ok:
                    print(f"  miss ({mode}, {name}): {report.get('summary')}", flush=True)
                results[mode][name] = (right + ok, total + 1)
    return results
