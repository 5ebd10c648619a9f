"""``%doctor restore``: the variables of this notebook's previous kernel, from the last
checkpoint it wrote (``checkpoint``), loaded into this one.

The notebook's imports, functions and classes run again first (their statements, as
the cells had them), so that instances of the notebook's own classes unpickle. Only
files of this user's own private folder are unpickled: a pickle runs code as it loads.
Standard library only (see ``protocol``).
"""

from __future__ import annotations

import os
import pickle
import time
from typing import Any

from . import store
from .guard import format_bytes
from .naming import cell_name
from .pickling import uncache
from .private import is_private_dir, open_private

READ_SPEED = 400 * 1024**2  # bytes a second, for the estimate in the offer


def restorable(agent: Any) -> store.Generation | None:
    """The newest checkpoint of an earlier kernel of this notebook."""
    place = store.kernel_place(agent.session_dir, create=False)
    if place is None or not is_private_dir(place[0]):
        return None
    return store.latest(place[0], before=place[1])


def offer(agent: Any) -> str | None:
    """The line the death notice ends with, when there is something to restore."""
    try:
        generation = restorable(agent)
    except OSError:
        return None
    if generation is None or not generation.variables:
        return None
    count = len(generation.variables)
    size = generation.size
    seconds = max(1, round(size / READ_SPEED))
    after = _after(generation)
    return (
        f"  This is a new kernel. Restore {count} variable{'s' if count != 1 else ''} "
        f"saved{after} ({format_bytes(size)}, about {seconds} s)? Run %doctor restore"
    )


def restore(agent: Any, names: list[str], *, recompute: bool) -> str:
    generation = restorable(agent)
    if generation is None:
        return (
            "No checkpoint of this notebook's previous kernel to restore: it saved none "
            "(checkpoints off, or it died before its first cell ended)."
        )
    namespace = agent.shell.user_ns
    started = time.perf_counter()
    lines = []
    failed = _run_definitions(generation, namespace)
    variables, unsaved = generation.variables, generation.unsaved
    wanted = names or list(variables) + list(unsaved)
    unknown = [n for n in wanted if n not in variables and n not in unsaved]
    loaded, size = [], 0
    for name in wanted:
        entry = variables.get(name)
        if entry is None:
            continue
        try:
            value = load(generation.path, entry)
        except Exception as exc:
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        namespace[name] = value
        loaded.append(name)
        size += int(entry.get("bytes") or 0)
        checkpoints = getattr(agent, "checkpoints", None)
        if checkpoints is not None:
            checkpoints.adopt(name, value, entry, generation.path)
    took = time.perf_counter() - started
    if loaded:
        lines.append(
            f"Restored {len(loaded)} variable{'s' if len(loaded) != 1 else ''} saved"
            f"{_after(generation)} ({format_bytes(size)}) in {took:.1f} s: {_names(loaded)}"
        )
    missing = [n for n in wanted if n in unsaved]
    if missing and recompute:
        lines += _recompute(agent, [unsaved[n] for n in missing], missing)
    elif missing:
        lines.append("Not saved (cannot be pickled, or over the size cap):")
        for name in missing:
            info = unsaved[name]
            made = cell_name(info.get("cell"), unknown="an earlier cell")
            lines.append(f"  {name} ({info.get('type')}): {info.get('why')}; made by {made}")
        lines.append("  %doctor restore --recompute runs the cells that made them again.")
    if unknown:
        lines.append(f"Not in the checkpoint: {_names(unknown)}")
    if failed:
        lines.append("Could not be restored:")
        lines += [f"  {text}" for text in failed]
    return "\n".join(lines) if lines else "The checkpoint holds no variables."


def load(directory: str, entry: dict[str, Any]) -> object:
    """One variable: its pickle, with its buffers read from their files."""
    files = [str(f) for f in entry["files"]]
    buffers = [_read(os.path.join(directory, name)) for name in files[1:]]
    with os.fdopen(open_private(os.path.join(directory, files[0])), "rb") as file:
        return pickle.load(file, buffers=buffers)  # our own private file


def _read(path: str) -> bytearray:
    with os.fdopen(open_private(path), "rb") as file:
        size = os.fstat(file.fileno()).st_size
        data = bytearray(size)
        if file.readinto(data) != size:
            raise OSError(f"{path} was cut short")
        uncache(file.fileno())  # the cgroup would count the cache next to the copy
        return data


def _run_definitions(generation: store.Generation, namespace: dict[str, Any]) -> list[str]:
    failed = []
    for source in generation.manifest.get("definitions") or []:
        try:
            exec(compile(str(source), "<kernel-doctor restore>", "exec"), namespace)
        except Exception as exc:
            first = str(source).splitlines()[0] if str(source) else ""
            failed.append(f"{first}: {type(exc).__name__}: {exc}")
    return failed


def _recompute(agent: Any, infos: list[dict[str, Any]], names: list[str]) -> list[str]:
    cells: dict[str, Any] = {}
    for info in infos:
        source = info.get("source")
        if source:
            cells.setdefault(str(source), info.get("cell"))
    lines = []
    for source, count in sorted(cells.items(), key=lambda c: c[1] or 0):
        result = agent.shell.run_cell(source, store_history=False)
        ran = cell_name(count, unknown="a cell")
        lines.append(f"Ran {ran} again" + ("" if result.success else ": it failed"))
    back = [n for n in names if n in agent.shell.user_ns]
    if back:
        lines.append(f"Recomputed: {_names(back)}")
    return lines


def _after(generation: store.Generation) -> str:
    count = generation.execution_count
    return f" after In [{count}]" if count is not None else ""


def _names(names: list[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
