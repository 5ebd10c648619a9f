"""Deaths of the kernel's own children: pool workers, DataLoader workers, subprocesses.

The kernel lives on, so no death report is made: the sampler lists the kernel's
process tree while it has children, and this module tells which of them went and
why. A child that went while the cgroup's ``oom_kill`` counter rose was OOM-killed
(the kernel log names it, where readable); a child seen as a zombie with a crash
signal, or whose faulthandler dump (inherited from the kernel by ``fork``) appeared
in the kernel's fatal file as it went, crashed. Anything else ended as processes end
(a pool closing or recycling its workers, a subprocess done, ``terminate()``): never
reported. A death is appended to the session's ``children.jsonl`` and the agent is
signalled, so the running cell hears of it at once (``agent/children.py``).
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

from ..agent.children import CRASH_SIGNALS, ChildDeath, child_signal, write_child_death
from ..agent.private import read_private
from ..agent.protocol import FATAL
from ..probe import procfs
from ..probe.base import MemorySource
from .session import Session

# A kernel that wrote a crash dump is dead this much later; a child's dump leaves it alive.
KERNEL_CRASH_WAIT = 0.2
# An OOM kill whose victim no listing saw go is looked up in the kernel log after this.
UNCLAIMED_WAIT = 0.3
# The agent says what a dead child was (a Pool worker…) within a moment of the signal.
ROLE_WAIT = 0.5


class Child:
    """A child of the kernel as the listings saw it: its name, command line, and the
    RSS of the last look that found it running."""

    __slots__ = ("argv", "name", "rss")

    def __init__(self, name: str, argv: list[str]) -> None:
        self.rss = 0
        self.name = name
        self.argv = argv


class ChildWatch:
    """Follows the kernel's descendants from one tree listing to the next."""

    def __init__(self, source: MemorySource, session: Session, kernel_pid: int) -> None:
        self.source = source
        self.session = session
        self.kernel_pid = kernel_pid
        self.signal = child_signal()
        self.known: dict[int, Child] = {}
        self.crashed: dict[int, int] = {}  # pid -> signal, seen as a zombie
        self.oom_kills = source.oom_kills()
        self._fatal = os.path.join(session.directory, FATAL)
        self._fatal_size = self._size()
        self.deaths = 0
        # The listing before this one, when the child that went was still there: how
        # memory stood as it died (after the kill, its memory is free again).
        self._before: dict[str, Any] = {}
        self._before_count = 0
        self.pending: list[tuple[float, ChildDeath]] = []
        self.unclaimed = 0  # OOM kills whose victim has not left the listing yet
        # A crash dump in the kernel's fatal file no listed child explains, waiting to
        # be told from the kernel's own: (when, text, children then, context then).
        self._crash: tuple[float, str, int, dict[str, Any]] | None = None
        self.unclaimed_since = 0.0

    def _size(self) -> int:
        try:
            return os.path.getsize(self._fatal)
        except OSError:
            return 0

    def update(self, pids: list[int], rss: list[int], context: dict[str, Any]) -> None:
        """One listing of the tree (the kernel excluded), with each one's RSS."""
        seen: set[int] = set()
        for pid, size in zip(pids, rss, strict=True):
            seen.add(pid)
            child = self.known.get(pid)
            if child is None:
                child = self.known[pid] = Child(procfs.name(pid), procfs.argv(pid))
            if size:
                child.rss = size
            else:  # a zombie reads zeros: its wait status is there until it is reaped
                status = procfs.zombie_status(pid)
                if status is not None and os.WIFSIGNALED(status):
                    self.crashed[pid] = os.WTERMSIG(status)
        gone = [pid for pid in self.known if pid not in seen]
        before, count = self._before, self._before_count
        self._before, self._before_count = context, len(seen)
        crash_text = self._new_crash_text()
        oom = self.source.oom_kills()
        if oom is not None and self.oom_kills is not None and oom > self.oom_kills:
            # The counter rises as the victim is killed; the victim stays listed (a
            # zombie) until its parent reaps it: the kills wait for their victims.
            self.unclaimed += oom - self.oom_kills
            self.unclaimed_since = self.unclaimed_since or time.monotonic()
        self.oom_kills = oom
        if not gone and not crash_text and not self.unclaimed and not self._crash:
            return
        gone_children = {pid: self.known.pop(pid) for pid in gone}
        killed = self._oom_victims(gone_children, self.unclaimed)
        self.unclaimed -= len(killed)
        then = {**context, **{k: v for k, v in before.items() if k != "seq"}}
        others = max(0, count - 1)
        for pid, child in gone_children.items():
            signum = self.crashed.pop(pid, None)
            if pid in killed:
                cause, signum = "out_of_memory", int(signal.SIGKILL)
            elif signum in CRASH_SIGNALS:
                cause = "native_crash"
            elif (crash_text or self._crash) and len(gone) == 1:
                text = crash_text or (self._crash[1] if self._crash else "")
                cause, signum = "native_crash", _signal_in(text)
                self._crash = None
            else:
                continue  # ended as processes end: not ours to report
            if cause == "native_crash":
                crash_text = ""  # explained
            self._report(pid, child, cause, signum, others, then)
        if crash_text:
            # Either the kernel itself is crashing (its faulthandler writes, then it
            # dies within milliseconds, and no listing follows), or a process forked
            # from it crashed (the faulthandler is inherited) and was gone before any
            # listing saw it, as a pool's first task can be: which, a later look says.
            self._crash = (time.monotonic(), crash_text, len(seen), context)
        elif self._crash and time.monotonic() - self._crash[0] >= KERNEL_CRASH_WAIT:
            _, text, alive, then_context = self._crash
            self._crash = None
            if procfs.running(self.kernel_pid):
                unknown = Child("", [])
                self._report(0, unknown, "native_crash", _signal_in(text), alive, then_context)
        if self.unclaimed > 0:
            self._unlisted_victims(seen, killed, others, then)
        if not self.unclaimed:
            self.unclaimed_since = 0.0

    def _unlisted_victims(
        self, seen: set[int], killed: set[int], others: int, then: dict[str, Any]
    ) -> None:
        """OOM kills no listed child explains: a child that lived less than a look's
        interval (a subprocess that filled memory at once, reaped at once). The kernel
        log names it, where readable; one still listed (a zombie) is waited for. Only a
        cgroup that holds nothing but the kernel's own processes says it was ours."""
        waited = time.monotonic() - self.unclaimed_since
        since = time.monotonic() - waited - 5
        victims = [v for v in _killed_since(since) if v[0] != self.kernel_pid]
        victims = [v for v in victims if v[0] not in killed][-self.unclaimed :]
        if any(v[0] in seen for v in victims) and waited < UNCLAIMED_WAIT:
            return  # listed still: it goes through the listing
        if victims and self._cgroup_holds_only(seen):
            for victim, name, size in victims:
                if victim in seen:
                    continue
                child = Child(name, [])
                child.rss = size
                self._report(victim, child, "out_of_memory", int(signal.SIGKILL), others, then)
            self.unclaimed = 0
        elif waited >= UNCLAIMED_WAIT:
            self.unclaimed = 0  # not ours to name

    def flush(self) -> None:
        """Store again the reports whose agent's word is due."""
        now = time.monotonic()
        while self.pending and self.pending[0][0] <= now:
            self._store(self.pending.pop(0)[1])

    def _store(self, death: ChildDeath) -> None:
        # Imported here: a child's death is rare, the supervisor's start path lean.
        from ..diagnosis.children import child_report
        from ..reports.store import store

        try:
            store(child_report(death, self.session.directory))
        except (OSError, ValueError):
            pass  # the cell was told; the history is second

    def _cgroup_holds_only(self, tree: set[int]) -> bool:
        """The memory cgroup holds nothing but the kernel, its children and us (one
        made for this kernel): an OOM kill there was of our tree. In a container's
        cgroup, shared with the server and other kernels, it could be anyone's."""
        directory = getattr(self.source, "directory", None)
        if not isinstance(directory, str):
            return False
        data = read_private(os.path.join(directory, "cgroup.procs"), limit=1 << 20)
        if data is None:
            return False
        ours = {self.kernel_pid, os.getpid(), *tree}
        return all(int(p) in ours for p in data.split() if p.isdigit())

    def crashes(self) -> bool:
        """The kernel's fatal file grew: a forked child may have crashed."""
        return self._size() > self._fatal_size

    def _new_crash_text(self) -> str:
        """What forked children's faulthandler wrote to the kernel's fatal file since
        the last look ("Fatal Python error: Segmentation fault" and a stack)."""
        size = self._size()
        if size <= self._fatal_size:
            self._fatal_size = size
            return ""
        data = read_private(self._fatal, limit=1 << 24) or b""
        text = data[self._fatal_size : self._fatal_size + 4096].decode(errors="replace")
        self._fatal_size = size
        return text if "Fatal Python error" in text else ""

    def _oom_victims(self, gone: dict[int, Child], new_kills: int) -> set[int]:
        if new_kills <= 0:
            return set()
        since = time.monotonic() - 30
        named = {
            pid
            for pid in gone
            if any("Killed process" in line for line in procfs.kernel_log_lines(pid, 5, since))
        }
        if named:
            return named
        # The kernel log is not readable (most users): the biggest ones went.
        biggest = sorted(gone, key=lambda p: gone[p].rss, reverse=True)
        return set(biggest[:new_kills])

    def _report(
        self,
        pid: int,
        child: Child,
        cause: str,
        signum: int | None,
        alive: int,
        context: dict[str, Any],
    ) -> None:
        limit = self.source.limit
        death = ChildDeath(
            pid=pid,
            name=child.name,
            argv=child.argv[:8],
            cause=cause,
            signal=procfs.signal_name(signum) if signum else None,
            rss_bytes=child.rss,
            tree_bytes=int(context.get("tree_bytes") or 0),
            counted_bytes=context.get("counted_bytes"),
            limit_bytes=limit.limit_bytes,
            limit_source=limit.source,
            limit_kind=limit.kind,
            others=alive,
            seq=context.get("seq"),
            t=time.time(),
        )
        self.deaths += 1
        write_child_death(self.session.directory, death)
        self.session.event("child", **death.to_json())
        self._store(death)
        # Stored again once the agent has said what the child was (its role).
        self.pending.append((time.monotonic() + ROLE_WAIT, death))
        if context.get("agent") and procfs.catches(self.kernel_pid, self.signal):
            from .signals import signal_thread

            # To the main thread: the agent's handler runs there, where a blocked
            # Pool.map waits.
            signal_thread(self.kernel_pid, self.kernel_pid, self.signal)


_KILLED = re.compile(r"Killed process (\d+) \((.*?)\).*?anon-rss:(\d+)kB")


def _killed_since(since: float) -> list[tuple[int, str, int]]:
    """(pid, name, anonymous RSS) of each OOM kill the kernel log holds since
    ``since`` (CLOCK_MONOTONIC), oldest first; empty where the log is not readable."""
    found = []
    for line in procfs.kernel_log_lines(0, limit=50, since=since, needle="Killed process"):
        match = _KILLED.search(line)
        if match:
            found.append((int(match[1]), match[2], int(match[3]) * 1024))
    return found


def _signal_in(text: str) -> int | None:
    for name in ("Segmentation fault", "Bus error", "Floating-point exception", "Aborted"):
        if name in text:
            return {
                "Segmentation fault": int(signal.SIGSEGV),
                "Bus error": int(signal.SIGBUS),
                "Floating-point exception": int(signal.SIGFPE),
                "Aborted": int(signal.SIGABRT),
            }[name]
    return None
