"""A timed-out cell under ``kernel-doctor run``: what it was doing when time ran out,
and whether an interrupt stops it."""

from __future__ import annotations

import time
from typing import Any

from ._errors import KernelDoctorError
from .agent.naming import is_cell_file
from .agent.protocol import Look, read_state
from .launch import SupervisedKernelManager

INTERRUPT_WAIT = 3.0  # how long an interrupt gets to stop the cell


def look_at_timeout(
    report: dict[str, Any], km: SupervisedKernelManager, session_dir: str, index: int | None
) -> None:
    """What the cell was doing when time ran out (the supervisor's look, as for
    ``kernel-doctor where``), then whether an interrupt stops it."""
    from .diagnosis.hang import describe, main_frames
    from .live import ask

    try:
        look: Look | None = ask(session_dir)
    except KernelDoctorError:
        look = None
    if look is not None:
        frames = main_frames(look)
        first = next((i for i, f in enumerate(frames) if is_cell_file(str(f[0]))), None)
        cell = look.get("cell")
        count = cell["execution_count"] if cell else None
        report["stack"] = [
            {
                "file": f[0],
                "line": f[1],
                "function": f[2],
                "cell_index": index if f[0] == look.get("file") else None,
                "execution_count": count if f[0] == look.get("file") else None,
            }
            for f in frames[first or 0 :]
        ]
        report["line"] = look.get("line") or report["line"]
        report["hang"] = {
            "summary": describe(look),
            "verdict": look.get("verdict"),
            "phase": look.get("phase"),
            "threads": look.get("os_threads"),
        }
    text = str(report["summary"]).rstrip(".")
    text += f": {describe(look)}" if look is not None else "."  # before the interrupt's wait
    worked = _interrupt(km, session_dir)
    report["interrupt"] = {"sent": worked is not None, "worked": bool(worked)}
    if worked:
        text += " The interrupt stopped it."
    elif worked is not None and look is not None and look.get("phase"):
        text += f" The interrupt did not stop the formatting within {INTERRUPT_WAIT:g} s."
    elif worked is not None:
        text += (
            " The interrupt did not stop it: it is inside a C call that does not check for "
            "interrupts, which only a restart ends."
        )
    report["summary"] = text


def _interrupt(km: SupervisedKernelManager, session_dir: str) -> bool | None:
    """Interrupt the kernel; True if the cell ended within INTERRUPT_WAIT, None if the
    interrupt could not even be sent."""
    from jupyter_core.utils import ensure_async, run_sync

    async def send() -> None:
        await ensure_async(km.interrupt_kernel())

    try:
        run_sync(send)()
    except Exception:
        return None
    deadline = time.monotonic() + INTERRUPT_WAIT
    while time.monotonic() < deadline:
        state = read_state(session_dir)
        if state is None or not state.busy:
            return True
        time.sleep(0.05)
    return False
