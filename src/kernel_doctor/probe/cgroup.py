"""cgroup v1 and v2 memory controllers: the limit, what it counts, OOM kills."""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Sequence
from dataclasses import dataclass

from .base import MemoryLimit, MemorySource, Watch, keyed, parse_keyed, read_int, read_text
from .files import Reader

# v1 reports "no limit" as the page counter's maximum (9223372036854771712 with 4 KiB
# pages); anything this large is no limit at all.
UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Mount:
    version: int  # 1 or 2
    root: str  # the hierarchy path mounted (not "/" inside some containers)
    mountpoint: str


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup mounts in /proc/PID/mountinfo: v2, and v1 with the memory controller."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or not extra:
            continue
        fstype = extra[0]
        options = extra[2].split(",") if len(extra) > 2 else []
        if fstype == "cgroup2":
            mounts.append(Mount(2, _unescape(fields[3]), _unescape(fields[4])))
        elif fstype == "cgroup" and "memory" in options:
            mounts.append(Mount(1, _unescape(fields[3]), _unescape(fields[4])))
    return mounts


def parse_proc_cgroup(text: str) -> tuple[str | None, str | None]:
    """(v1 memory cgroup path, v2 cgroup path) from /proc/PID/cgroup."""
    v1 = v2 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v1, v2


def cgroup_dir(mount: Mount, path: str) -> str:
    """Where cgroup ``path`` (as /proc/PID/cgroup names it) is in this mount."""
    # Without a cgroup namespace, a container sees its own cgroup's full path in
    # /proc/PID/cgroup, but only that cgroup is mounted (the mount's root).
    if mount.root != "/" and (path == mount.root or path.startswith(mount.root + "/")):
        path = path[len(mount.root) :]
    return os.path.join(mount.mountpoint, path.lstrip("/")).rstrip("/") or "/"


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")


def _ancestors(leaf: str, top: str) -> list[str]:
    """``leaf`` and each directory above it up to and including ``top``."""
    dirs = []
    current = leaf
    while True:
        dirs.append(current)
        if current == top or len(current) <= len(top):
            break
        current = os.path.dirname(current)
    return dirs


class CgroupV1(MemorySource):
    def __init__(self, directory: str, limit: MemoryLimit) -> None:
        self.directory = directory
        self.limit = limit
        self._fds: list[int] = []
        self._usage = Reader(os.path.join(directory, "memory.usage_in_bytes"))
        self._stat = Reader(os.path.join(directory, "memory.stat"))
        self._oom = Reader(os.path.join(directory, "memory.oom_control"))

    @classmethod
    def probe(cls, leaf: str, mountpoint: str) -> CgroupV1 | None:
        best: tuple[int, str] | None = None
        for directory in _ancestors(leaf, mountpoint):
            value = read_int(os.path.join(directory, "memory.limit_in_bytes"))
            if value is not None and value < UNLIMITED and (best is None or value < best[0]):
                best = (value, directory)
        # memory.stat's hierarchical_memory_limit also sees ancestors that a
        # container cannot (they are not mounted), and the leaf's usage is the best
        # usage we can read for them.
        stat = parse_keyed(read_text(os.path.join(leaf, "memory.stat")))
        hierarchical = stat.get("hierarchical_memory_limit")
        visible = best[0] if best else UNLIMITED
        if hierarchical is not None and hierarchical < min(visible, UNLIMITED):
            best = (hierarchical, leaf)
        if best is None:
            return None
        value, directory = best
        limit = MemoryLimit(value, "cgroup-v1", f"cgroup v1 memory limit of {directory}", directory)
        return cls(directory, limit)

    def counted(self) -> int | None:
        usage = self._usage.read_int()
        if usage is None:
            return None
        # The hierarchy's totals where there are any (use_hierarchy), else this group's.
        total_inactive, total_active, inactive, active = keyed(
            self._stat.read(),
            "total_inactive_file",
            "total_active_file",
            "inactive_file",
            "active_file",
        )
        self.active_file = _first(total_active, active)
        return max(0, usage - _first(total_inactive, inactive))

    def oom_kills(self) -> int | None:
        return keyed(self._oom.read(), "oom_kill")[0]

    def peak(self) -> int | None:
        return read_int(os.path.join(self.directory, "memory.max_usage_in_bytes"))

    def watch(self, marks: Sequence[int]) -> Watch | None:
        # Memory thresholds (Documentation/admin-guide/cgroup-v1/memory.rst): one
        # eventfd registered once per mark on memory.usage_in_bytes, plus the OOM
        # notifier, so a fast fill wakes us at each mark instead of at the next sample.
        try:
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except (AttributeError, OSError):
            return None
        self._fds.append(efd)
        try:
            usage = os.open(os.path.join(self.directory, "memory.usage_in_bytes"), os.O_RDONLY)
            self._fds.append(usage)
            control = os.path.join(self.directory, "cgroup.event_control")
            with open(control, "w") as f:
                for mark in marks:
                    f.write(f"{efd} {usage} {mark}")
                    f.flush()
            oom = os.open(os.path.join(self.directory, "memory.oom_control"), os.O_RDONLY)
            self._fds.append(oom)
            with open(control, "w") as f:
                f.write(f"{efd} {oom}")
        except OSError:
            self.close()
            return None
        return Watch(efd, select.POLLIN)

    def drain(self) -> None:
        if self._fds:
            with contextlib.suppress(OSError):
                os.eventfd_read(self._fds[0])

    def close(self) -> None:
        self._usage.close()
        self._stat.close()
        self._oom.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


class CgroupV2(MemorySource):
    def __init__(self, directory: str, limit: MemoryLimit) -> None:
        self.directory = directory
        self.limit = limit
        self._events_fd: int | None = None
        self._current = Reader(os.path.join(directory, "memory.current"))
        self._stat = Reader(os.path.join(directory, "memory.stat"))
        self._events = Reader(os.path.join(directory, "memory.events"))

    @classmethod
    def probe(cls, leaf: str, mountpoint: str) -> CgroupV2 | None:
        best: tuple[int, str] | None = None
        for directory in _ancestors(leaf, mountpoint):
            text = read_text(os.path.join(directory, "memory.max"))
            if text is None or text.strip() == "max":
                continue
            try:
                value = int(text.strip())
            except ValueError:
                continue
            if value < UNLIMITED and (best is None or value < best[0]):
                best = (value, directory)
        if best is None:
            return None
        value, directory = best
        limit = MemoryLimit(value, "cgroup-v2", f"cgroup v2 memory.max of {directory}", directory)
        return cls(directory, limit)

    def counted(self) -> int | None:
        current = self._current.read_int()
        if current is None:
            return None
        inactive, active = keyed(self._stat.read(), "inactive_file", "active_file")
        self.active_file = active or 0
        return max(0, current - (inactive or 0))

    def oom_kills(self) -> int | None:
        return keyed(self._events.read(), "oom_kill")[0]

    def peak(self) -> int | None:
        return read_int(os.path.join(self.directory, "memory.peak"))

    def watch(self, marks: Sequence[int]) -> Watch | None:
        # v2 has no usage thresholds; memory.events is pollable (POLLPRI) and changes
        # on "high", "max", "oom" and "oom_kill", the moments that matter most.
        try:
            self._events_fd = os.open(
                os.path.join(self.directory, "memory.events"), os.O_RDONLY | os.O_CLOEXEC
            )
        except OSError:
            return None
        self.drain()
        return Watch(self._events_fd, select.POLLPRI)

    def drain(self) -> None:
        if self._events_fd is not None:
            try:
                os.lseek(self._events_fd, 0, os.SEEK_SET)
                os.read(self._events_fd, 4096)
            except OSError:
                pass

    def close(self) -> None:
        self._current.close()
        self._stat.close()
        self._events.close()
        if self._events_fd is not None:
            os.close(self._events_fd)
            self._events_fd = None


def _first(*values: int | None) -> int:
    """The first value present (0 where none is)."""
    return next((value for value in values if value is not None), 0)
