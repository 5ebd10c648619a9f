"""Make a fresh memory cgroup with a limit, for ``kernel-doctor run --memory-limit``.

As root on cgroup v1 or v2 the cgroup is made directly, under
$KERNEL_DOCTOR_CGROUP_PARENT if set (tests use it to keep one parent per session),
else under the caller's own memory cgroup. Otherwise ``systemd-run --user --scope``
is used where a user systemd answers. The supervisor moves only the kernel into a
cgroup made here, so an OOM kill inside it cannot take the supervisor along.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from .._errors import CgroupUnavailable
from .base import read_text
from .cgroup import cgroup_dir, parse_mountinfo, parse_proc_cgroup

ENV_PARENT = "KERNEL_DOCTOR_CGROUP_PARENT"
_counter = itertools.count()


@dataclass
class LimitedCgroup:
    """Where a limited kernel goes: a cgroup directory to join, or a command prefix."""

    limit_bytes: int
    path: str | None = None  # cgroup directory; the supervisor writes the kernel's pid
    command_prefix: list[str] = field(default_factory=list)  # e.g. systemd-run … --

    def remove(self, timeout: float = 5.0) -> None:
        """Remove the cgroup once its processes are gone (waits up to ``timeout``)."""
        if self.path is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)


def default_parent(proc: str = "/proc") -> tuple[int, str] | None:
    """(cgroup version, directory) of this process's memory cgroup, v2 preferred."""
    mounts = parse_mountinfo(read_text(f"{proc}/self/mountinfo") or "")
    v1_path, v2_path = parse_proc_cgroup(read_text(f"{proc}/self/cgroup") or "")
    for mount in mounts:
        if mount.version == 2 and v2_path is not None:
            directory = cgroup_dir(mount, v2_path)
            controllers = read_text(os.path.join(mount.mountpoint, "cgroup.controllers")) or ""
            if "memory" in controllers.split():
                return 2, directory
    for mount in mounts:
        if mount.version == 1 and v1_path is not None:
            return 1, cgroup_dir(mount, v1_path)
    return None


def make_limited_cgroup(limit_bytes: int) -> LimitedCgroup:
    parent_env = os.environ.get(ENV_PARENT)
    if parent_env:
        version = 2 if os.path.exists(os.path.join(parent_env, "cgroup.controllers")) else 1
        parent: tuple[int, str] | None = (version, parent_env)
    else:
        parent = default_parent()
    errors = []
    if parent is not None:
        try:
            return _make_direct(parent[0], parent[1], limit_bytes)
        except OSError as exc:
            errors.append(f"{parent[1]}: {exc.strerror or exc}")
    scope = _systemd_scope(limit_bytes)
    if scope is not None:
        return scope
    where = "; ".join(errors) or "no memory cgroup controller is mounted"
    raise CgroupUnavailable(
        f"cannot make a memory cgroup for --memory-limit ({where}): run as root, or in "
        "a systemd user session, or drop --memory-limit to run under the limit that "
        "already applies"
    )


def _make_direct(version: int, parent: str, limit_bytes: int) -> LimitedCgroup:
    name = f"kernel-doctor-{os.getpid()}-{next(_counter)}"
    path = os.path.join(parent, name)
    if version == 2:
        _enable_memory_controller(parent)
    os.mkdir(path)
    try:
        if version == 2:
            _write(os.path.join(path, "memory.max"), str(limit_bytes))
            if os.path.exists(os.path.join(path, "memory.swap.max")):
                _write(os.path.join(path, "memory.swap.max"), "0")
        else:
            _write(os.path.join(path, "memory.limit_in_bytes"), str(limit_bytes))
            memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # without it, swap would stretch the limit
                _write(memsw, str(limit_bytes))
        if not os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
            raise PermissionError(13, "cgroup.procs is not writable")
    except OSError:
        try:
            os.rmdir(path)
        except OSError:
            pass  # keep the first error: it is the one that says what is wrong
        raise
    return LimitedCgroup(limit_bytes, path=path)


def _enable_memory_controller(parent: str) -> None:
    enabled = (read_text(os.path.join(parent, "cgroup.subtree_control")) or "").split()
    if "memory" not in enabled:
        # Fails (EBUSY) when the parent holds processes itself: cgroup v2's
        # "no internal processes" rule. The caller then tries systemd.
        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory")


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _systemd_scope(limit_bytes: int) -> LimitedCgroup | None:
    tool = shutil.which("systemd-run")
    if tool is None:
        return None
    prefix = [
        tool,
        "--user",
        "--scope",
        "--quiet",
        "-p",
        f"MemoryMax={limit_bytes}",
        "-p",
        "MemorySwapMax=0",
        "--",
    ]
    try:
        probe = subprocess.run(
            [*prefix, "true"],
            capture_output=True,
            timeout=10,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if probe.returncode != 0:
        return None
    return LimitedCgroup(limit_bytes, command_prefix=prefix)
