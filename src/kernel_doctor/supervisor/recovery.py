"""Report deaths that took the supervisor along, from what they left on disk.

A whole-container OOM kill (or cgroup v2's memory.oom.group) kills the supervisor
with the kernel, before it can write anything. Its session directory survives;
the next supervised start finds it here.
"""

from __future__ import annotations

import os
import shutil
import time

from .session import read_meta


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"kernel_doctor" in f.read()
    except OSError:
        return False


def recover_stale_sessions(sessions_root: str, own: str) -> list[str]:
    """Turn leftover sessions of dead supervisors into reports; return report paths."""
    try:
        names = os.listdir(sessions_root)
    except OSError:
        return []
    reports = []
    for name in names:
        directory = os.path.join(sessions_root, name)
        if directory == own:
            continue
        meta = read_meta(directory)
        pid = meta.get("supervisor_pid")
        if isinstance(pid, int) and _alive(pid):
            continue
        if not meta and time.time() - _mtime(directory) < 60:
            continue  # a supervisor that is still starting
        try:
            path = _report(directory)
        except Exception:
            path = None
        if path:
            reports.append(path)
        shutil.rmtree(directory, ignore_errors=True)
    return reports


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


def _report(directory: str) -> str | None:
    from ..diagnosis import diagnose
    from ..reports.store import publish
    from .collect import collect
    from .session import read_samples

    samples = read_samples(directory)
    meta = read_meta(directory)
    ended = float(meta.get("started") or 0.0) + (samples[-1][0] if samples else 0.0)
    evidence = collect(directory, status=None, ended=ended, requested=None, supervisor_lost=True)
    diagnosis = diagnose(evidence)
    if diagnosis is None:
        return None
    return publish(evidence, diagnosis, directory, None)
