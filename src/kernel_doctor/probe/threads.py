"""What each thread of a process is doing at the OS level: burning CPU, or sleeping in
which system call, on what.

``/proc/PID/task/TID/syscall`` and ``wchan`` need ptrace permission, which Yama
(``ptrace_scope=1``, Ubuntu's default) grants only to ancestors: the supervisor, the
kernel's parent, reads them, and ``kernel-doctor where`` asks the supervisor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .files import read_text

# System calls a hung kernel sleeps in, by number (they differ between architectures).
_X86_64 = {
    0: "read", 1: "write", 7: "poll", 17: "pread64", 19: "readv", 23: "select",
    35: "nanosleep", 42: "connect", 43: "accept", 45: "recvfrom", 47: "recvmsg",
    61: "wait4", 72: "fcntl", 73: "flock", 202: "futex", 230: "clock_nanosleep",
    232: "epoll_wait", 257: "openat", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait",
    288: "accept4", 299: "recvmmsg", 441: "epoll_pwait2",
}  # fmt: skip
_AARCH64 = {
    63: "read", 64: "write", 67: "pread64", 65: "readv", 72: "pselect6", 73: "ppoll",
    101: "nanosleep", 203: "connect", 202: "accept", 207: "recvfrom", 212: "recvmsg",
    260: "wait4", 25: "fcntl", 32: "flock", 98: "futex", 115: "clock_nanosleep",
    22: "epoll_pwait", 56: "openat", 242: "accept4", 243: "recvmmsg", 441: "epoll_pwait2",
}  # fmt: skip
SYSCALLS = {"x86_64": _X86_64, "aarch64": _AARCH64}.get(os.uname().machine, {})
_FD_CALLS = {"read", "pread64", "readv", "recvfrom", "recvmsg", "recvmmsg", "write",
             "connect", "accept", "accept4", "fcntl", "flock"}  # fmt: skip
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs",
              "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "lustre"}  # fmt: skip


TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # cpu_ticks per second


def cpu_ticks(stat: str | None) -> int | None:
    """utime + stime from a /proc …/stat line (the name in parentheses may hold spaces
    or parentheses itself)."""
    try:
        fields = (stat or "").rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ThreadState:
    tid: int
    name: str
    state: str  # R running, S sleeping, D uninterruptible (I/O), …
    cpu_ticks: int  # utime + stime, in clock ticks
    wchan: str | None  # the kernel function it sleeps in, where readable
    syscall: str | None  # the system call it sleeps in ("running" when on a CPU)
    target: str | None  # what that call waits on: "socket", a file path, "pipe", …
    network_fs: str | None  # the network filesystem type, for a file on one


def threads(pid: int) -> list[ThreadState]:
    """Every thread of ``pid``, the main thread first; [] when it is gone."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []
    tids.sort(key=lambda t: t != pid)
    return [state for tid in tids if (state := _thread(pid, tid)) is not None]


def _thread(pid: int, tid: int) -> ThreadState | None:
    base = f"/proc/{pid}/task/{tid}"
    stat = read_text(f"{base}/stat")
    if not stat:
        return None
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    state, ticks = stat[stat.rindex(")") + 2 :].split()[0], cpu_ticks(stat) or 0
    wchan = read_text(f"{base}/wchan")
    syscall, target, network = _syscall(pid, read_text(f"{base}/syscall"))
    return ThreadState(
        tid, name, state, ticks, wchan if wchan and wchan != "0" else None,
        syscall, target, network,
    )  # fmt: skip


def _syscall(pid: int, text: str | None) -> tuple[str | None, str | None, str | None]:
    if not text:
        return None, None, None  # not permitted (Yama, another user) or gone
    parts = text.split()
    if parts[0] == "running":
        return "running", None, None
    if parts[0] == "-1":
        return None, None, None  # blocked, but not in a system call
    try:
        number = int(parts[0])
    except ValueError:
        return None, None, None
    name = SYSCALLS.get(number, f"syscall {number}")
    if name not in _FD_CALLS or len(parts) < 2:
        return name, None, None
    try:
        fd = int(parts[1], 16)
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except (OSError, ValueError):
        return name, None, None
    if link.startswith("socket:"):
        return name, "socket", None
    if link.startswith("pipe:"):
        return name, "pipe", None
    if link.startswith("/"):
        return name, link, filesystem_of(pid, link)
    return name, link, None


def filesystem_of(pid: int, path: str) -> str | None:
    """The filesystem type under ``path`` when it is a network one, else None."""
    best, fstype = "", ""
    for line in (read_text(f"/proc/{pid}/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, fstype = mount, right.split()[0]
    return fstype if fstype in NETWORK_FS or fstype.startswith("fuse.") else None


def verdict(thread: ThreadState, cpu_share: float | None) -> str:
    """One phrase: "burning CPU", "waiting on a socket read (recvfrom)", …"""
    if thread.state == "R" or (cpu_share is not None and cpu_share > 0.5):
        return "burning CPU"
    call = thread.syscall
    if call in (None, "running"):
        if thread.wchan:
            return f"sleeping in the kernel ({thread.wchan})"
        return "sleeping" if thread.state in ("S", "D") else f"state {thread.state}"
    if call == "futex":
        return "waiting on a lock (futex)"
    if call in ("nanosleep", "clock_nanosleep"):
        return f"sleeping ({call})"
    if call in ("poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait"):
        return f"waiting for I/O ({call})"
    if thread.target == "socket":
        reading = call.startswith(("read", "recv", "pread"))
        return f"waiting on a socket {'read' if reading else call} ({call})"
    if thread.network_fs:
        return f"waiting on a file on a network filesystem ({thread.network_fs}: {thread.target})"
    if thread.target:
        return f"waiting in {call} on {thread.target}"
    return f"waiting in {call}"
