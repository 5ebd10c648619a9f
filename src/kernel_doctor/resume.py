"""``kernel-doctor run --resume``: where an earlier run of the same notebook got to, by
the last checkpoint its kernel wrote, and the restore that takes the new kernel there.

The checkpoint lists, in order, a hash of every cell its kernel ran; that sequence is
found among the notebook's code cells (nbclient skips empty ones, as the kernel never
saw them), so a run that was itself resumed is placed right too. A notebook edited
since no longer matches: the run then starts from the top, and says so.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

from .agent import store
from .agent.cells import source_hash
from .agent.checkpoint import ENV_CHECKPOINT


@dataclass(frozen=True)
class ResumePoint:
    index: int  # the notebook cell the checkpoint's state is after
    execution_count: int | None  # its count in the earlier run's kernel
    variables: int


def resume_point(nb: Any, notebook_path: str) -> ResumePoint | None:
    from .agent.private import is_private_dir
    from .paths import session_roots

    # Where the earlier run's kernel kept them: next to its session, in the data dir
    # or in the temp-dir fallback.
    found = []
    for sessions in session_roots():
        folder = store.notebook_dir(os.path.dirname(sessions), notebook_path, create=False)
        if is_private_dir(folder):
            newest = store.latest(folder)
            if newest is not None:
                found.append(newest)
    if not found:
        return None
    generation = max(found, key=lambda g: float(g.manifest.get("t") or 0))
    history = [str(h) for h in generation.manifest.get("history") or []]
    cells = [
        (i, source_hash(c.source))
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and c.source.strip()
    ]
    if not history or len(history) > len(cells):
        return None
    hashes = [h for _, h in cells]
    for start in range(len(cells) - len(history), -1, -1):
        if hashes[start : start + len(history)] == history:
            index = cells[start + len(history) - 1][0]
            return ResumePoint(index, generation.execution_count, len(generation.variables))
    return None


def resume(kc: Any, nb: Any, notebook_path: str | None, timeout: float | None, log: Any) -> int:
    """Restore the last checkpoint of an earlier run: the index of the cell it is after
    (-1: none, run from the top)."""
    say = log or (lambda text, style="dim": None)
    point = resume_point(nb, notebook_path) if notebook_path else None
    if point is None:
        say("--resume: no checkpoint of an earlier run of this notebook matches its cells "
            "(an earlier run leaves one with --checkpoint); running it from the top",
            style="yellow")  # fmt: skip
        return -1
    said = restore_in_kernel(kc, timeout)
    skipped = sum(1 for c in nb.cells[: point.index + 1] if c.cell_type == "code")
    say(f"--resume: {said.splitlines()[0] if said else 'restored'}", style="")
    say(f"--resume: skipping the first {skipped} code cells, run before the death")
    return point.index


def restore_in_kernel(kc: Any, timeout: float | None) -> str:
    """Run the restore in the new kernel, out of the notebook: what it said."""
    said: list[str] = []

    def collect(msg: dict[str, Any]) -> None:
        content = msg.get("content", {})
        if msg.get("msg_type") == "stream":
            said.append(str(content.get("text", "")))
        elif msg.get("msg_type") in ("display_data", "execute_result"):
            said.append(str(content.get("data", {}).get("text/plain", "")))
        elif msg.get("msg_type") == "error":
            said.append(f"{content.get('ename')}: {content.get('evalue')}")

    execute = kc.execute_interactive
    if inspect.iscoroutinefunction(execute):  # nbclient's clients are asynchronous
        from jupyter_core.utils import run_sync

        execute = run_sync(execute)
    execute(
        "%doctor restore --recompute",
        store_history=False,
        timeout=timeout or 600,
        output_hook=collect,
    )
    return "".join(said).strip()


def notebook_env(path: str, checkpoint: bool) -> dict[str, str]:
    """What a run's kernel is told: its notebook, for its checkpoints, and whether to
    write them (then also while cells run: a batch never pauses). Off unless asked,
    in the kernel's own environment or with ``--checkpoint``: written while cells run,
    they cost data-heavy cells time (benchmarks/CHECKPOINT.md)."""
    env = {store.ENV_NOTEBOOK: os.path.abspath(path)}
    if checkpoint:
        env[ENV_CHECKPOINT] = "always"
    else:
        env[ENV_CHECKPOINT] = os.environ.get(ENV_CHECKPOINT, "off")
    return env
