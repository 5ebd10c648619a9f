"""Find the memory limit that really applies to a process."""

from __future__ import annotations

import os

from .base import MemoryLimit, MemorySource, read_text
from .cgroup import CgroupV1, CgroupV2, cgroup_dir, parse_mountinfo, parse_proc_cgroup
from .system import SystemMemory


def find_memory_source(pid: int | str = "self", proc: str = "/proc") -> MemorySource:
    """The tightest of: the process's cgroup v2 limit, its v1 limit, system RAM + swap.

    ``proc`` is the procfs root; mount points found in its mountinfo are used as they
    are, so a fixture tree's mountinfo names fixture directories.
    """
    system = SystemMemory(proc)
    best: MemorySource = system
    mounts = parse_mountinfo(read_text(os.path.join(proc, str(pid), "mountinfo")) or "")
    v1_path, v2_path = parse_proc_cgroup(read_text(os.path.join(proc, str(pid), "cgroup")) or "")
    for mount in mounts:
        found: MemorySource | None = None
        if mount.version == 2 and v2_path is not None:
            found = CgroupV2.probe(cgroup_dir(mount, v2_path), mount.mountpoint)
        elif mount.version == 1 and v1_path is not None:
            found = CgroupV1.probe(cgroup_dir(mount, v1_path), mount.mountpoint)
        if found is not None and (
            found.limit.limit_bytes < best.limit.limit_bytes or best.limit.limit_bytes == 0
        ):
            best = found
    # An unreadable meminfo gives the system a limit of 0: that is no limit at all.
    if best is not system and 0 < system.limit.limit_bytes < best.limit.limit_bytes:
        return system
    return best


__all__ = ["MemoryLimit", "MemorySource", "find_memory_source"]
