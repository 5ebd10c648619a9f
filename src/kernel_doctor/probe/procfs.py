"""Processes: RSS of a process tree, caught signals, OOM score, kernel log lines."""

from __future__ import annotations

import os

from .files import read_text

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int, proc: str = "/proc") -> int | None:
    sizes = statm_sizes(read_text(f"{proc}/{pid}/statm"))
    return sizes[0] if sizes else None


def statm_sizes(text: str | None) -> tuple[int, int] | None:
    """A process's resident bytes and data bytes (its private writable mappings,
    what RLIMIT_DATA counts) from the text of its ``statm``; None if unreadable."""
    fields = text.split() if text else []
    try:
        return int(fields[1]) * PAGE_SIZE, int(fields[5]) * PAGE_SIZE
    except (IndexError, ValueError):
        return None


def children(pid: int, proc: str = "/proc") -> list[int]:
    """Direct children of ``pid`` (each thread lists the children it started)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"{proc}/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        text = read_text(f"{proc}/{pid}/task/{task}/children")
        if text:
            found.extend(int(p) for p in text.split())
    return found


def tree(pid: int, proc: str = "/proc") -> list[int]:
    """``pid`` and all its descendants."""
    pids: list[int] = []
    todo = [pid]
    while todo and len(pids) < 10_000:
        current = todo.pop()
        pids.append(current)
        todo.extend(children(current, proc))
    return pids


def _stat_fields(pid: int, proc: str = "/proc") -> list[str]:
    """/proc/PID/stat's fields after the command name (which may hold spaces and
    parentheses): index 0 is field 3 (state)."""
    text = read_text(f"{proc}/{pid}/stat") or ""
    return text.rsplit(")", 1)[1].split() if ")" in text else []


def argv(pid: int, proc: str = "/proc") -> list[str]:
    """``pid``'s command line ([] if gone or unreadable): what it says of itself."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return []
    return [a.decode(errors="replace") for a in data.split(b"\0") if a]


def name(pid: int, proc: str = "/proc") -> str:
    """``pid``'s command name (/proc/PID/comm), "" if gone."""
    return (read_text(f"{proc}/{pid}/comm") or "").strip()


def running(pid: int, proc: str = "/proc") -> bool:
    """``pid`` exists and is not a zombie (nor dead, being reaped)."""
    fields = _stat_fields(pid, proc)
    return bool(fields) and fields[0] not in ("Z", "X")


def zombie_status(pid: int, proc: str = "/proc") -> int | None:
    """A zombie's wait status (stat field 52, readable until its parent reaps it), or
    None if ``pid`` is not a zombie."""
    fields = _stat_fields(pid, proc)
    if len(fields) < 50 or fields[0] != "Z":
        return None
    return int(fields[49]) if fields[49].lstrip("-").isdigit() else None


def start_time(pid: int, proc: str = "/proc") -> int | None:
    """When ``pid`` started, in clock ticks after boot: with the pid, it names one
    process for good (a pid is reused, a (pid, start time) pair never is)."""
    fields = _stat_fields(pid, proc)
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def started_at(pid: int, proc: str = "/proc") -> float | None:
    """When ``pid`` started, in epoch seconds (to a clock tick)."""
    ticks = start_time(pid, proc)
    boot = next(
        (line.split()[1] for line in (read_text(f"{proc}/stat") or "").splitlines()
         if line.startswith("btime ")),
        None,
    )  # fmt: skip
    if ticks is None or boot is None or not boot.isdigit():
        return None
    return int(boot) + ticks / os.sysconf("SC_CLK_TCK")


def parent_of(pid: int, proc: str = "/proc") -> int | None:
    fields = _stat_fields(pid, proc)
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


def owned_by_me(pid: int, proc: str = "/proc") -> bool:
    try:
        return os.stat(f"{proc}/{pid}").st_uid == os.geteuid()
    except OSError:
        return False


def is_supervisor(pid: object, start: int | None, proc: str = "/proc") -> bool:
    """The supervisor that wrote a session runs as ``pid`` now: a process of this
    user's that started at ``start`` (a session's meta says both). Anything in a
    command line can be faked by anyone; a process's owner and start time cannot.
    A session from before start times were recorded counts if the process is this
    user's and runs kernel-doctor."""
    if not isinstance(pid, int) or pid <= 0 or not owned_by_me(pid, proc):
        return False
    if start is not None:
        return start_time(pid, proc) == start
    return any("kernel_doctor" in a for a in argv(pid, proc))


def caught_signals(pid: int, proc: str = "/proc") -> int:
    """The SigCgt mask of ``pid``: bit (n - 1) is set when signal n has a handler."""
    for line in (read_text(f"{proc}/{pid}/status") or "").splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def catches(pid: int, signum: int, proc: str = "/proc") -> bool:
    return bool(caught_signals(pid, proc) >> (signum - 1) & 1)


def raise_oom_score(delta: int = 500) -> None:
    """Make the calling process a likelier OOM victim (raising needs no privilege)."""
    path = "/proc/self/oom_score_adj"
    current = read_text(path)
    try:
        value = min(1000, int((current or "0").strip()) + delta)
        with open(path, "w") as f:
            f.write(str(value))
    except (OSError, ValueError):
        pass


def kernel_log_lines(
    pid: int, limit: int = 20, since: float = 0.0, needle: str | None = None
) -> list[str]:
    """Kernel log lines that name ``pid`` (OOM kills, segfaults), or that hold
    ``needle`` instead, where readable, logged after ``since`` (CLOCK_MONOTONIC
    seconds, the clock /dev/kmsg stamps records with) so that an earlier process with
    the same pid is not blamed.

    /dev/kmsg needs CAP_SYSLOG or dmesg_restrict=0; most users have neither, so an
    empty list is normal and never an error.
    """
    needles = (needle,) if needle else (f"process {pid} ", f"pid={pid},", f"[{pid}]", f" {pid} (")
    lines: list[str] = []
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return lines
    try:
        for _ in range(100_000):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:
                continue  # EPIPE: records overwritten while we read
            if not record:
                break
            text = record.decode(errors="replace")
            if since and _kmsg_seconds(text) < since:
                continue
            message = text.split(";", 1)[-1].splitlines()[0] if ";" in text else text
            # "oom-kill:constraint=…" repeats what "Killed process" says, less readably.
            if any(n in message for n in needles) and not message.startswith("oom-kill:"):
                lines.append(message.strip())
    finally:
        os.close(fd)
    return lines[-limit:]


def _kmsg_seconds(record: str) -> float:
    """The time of a /dev/kmsg record ("prio,seq,usec,flags;message"), in seconds."""
    try:
        return int(record.split(",", 3)[2]) / 1e6
    except (IndexError, ValueError):
        return float("inf")  # unreadable: keep the line


def signal_name(signum: int) -> str:
    """'SIGSEGV', or 'SIGRTMIN+6' for real-time signals, which the enum lacks."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        rtmin = int(getattr(signal, "SIGRTMIN", 34))
        return f"SIGRTMIN+{signum - rtmin}" if signum > rtmin else f"signal {signum}"
