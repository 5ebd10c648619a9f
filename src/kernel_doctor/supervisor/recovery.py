"""Report deaths that took the supervisor along, from what they left on disk.

A whole-container OOM kill (or cgroup v2's memory.oom.group) kills the supervisor
with the kernel, before it can write anything. Its session directory survives;
the next supervised start finds it here.
"""

from __future__ import annotations

import os
import re
import shutil

from ..agent.private import is_private_dir
from ..agent.protocol import read_meta, read_samples
from ..probe.procfs import is_supervisor, owned_by_me, started_at

# Only folders named like our sessions ("<supervisor pid>-<start ms>") are touched,
# and those of `kernel-doctor run` and the papermill engine ("run-<pid>-<start ms>"),
# which are removed once the process that made them is gone: it reported already.
SESSION_NAME = re.compile(r"^\d+-\d+$")
RUN_SESSION = re.compile(r"^(?:run|papermill)-(\d+)-(\d+)$")


def recover_stale_sessions(sessions_root: str, own: str) -> list[str]:
    """Turn leftover sessions of dead supervisors into reports; return report paths."""
    try:
        names = os.listdir(sessions_root)
    except OSError:
        return []
    reports = []
    host = os.uname().nodename
    for name in names:
        directory = os.path.join(sessions_root, name)
        if directory == own or not is_private_dir(directory):
            continue
        run = RUN_SESSION.match(name)
        if run is not None:
            if not _running(int(run.group(1)), int(run.group(2)) / 1000):
                shutil.rmtree(directory, ignore_errors=True)  # left by a killed run
            continue
        if not SESSION_NAME.match(name):
            continue
        meta = read_meta(directory)
        if meta is None:
            continue  # a supervisor still starting (or not ours): leave it alone
        if (meta.host or host) != host:
            continue  # a data dir shared with other machines (NFS home): not ours to judge
        if is_supervisor(meta.supervisor_pid, meta.supervisor_start):
            continue
        try:
            path = _report(directory)
        except Exception:
            path = None
        if path:
            reports.append(path)
        shutil.rmtree(directory, ignore_errors=True)
    return reports


def _running(pid: int, made: float) -> bool:
    """The process that made a run's folder at ``made`` still runs (not a later one
    with its pid: that started after the folder was made)."""
    if not owned_by_me(pid):
        return False
    started = started_at(pid)
    return started is None or started <= made + 1.0


def _report(directory: str) -> str | None:
    from ..diagnosis import diagnose
    from ..reports.store import publish
    from .collect import collect

    samples = read_samples(directory)
    meta = read_meta(directory)
    ended = (meta.started if meta else 0.0) + (samples[-1].elapsed if samples else 0.0)
    evidence = collect(directory, status=None, ended=ended, requested=None, supervisor_lost=True)
    diagnosis = diagnose(evidence)
    if diagnosis is None:
        return None
    return publish(evidence, diagnosis, directory, None)
