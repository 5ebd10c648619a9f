"""Forward signals to the kernel exactly once, whoever sent them and how.

See the process model in ``kernel_doctor.supervisor``: the sentinel, a forked copy
of the supervisor in the same process group, receives only group-wide signals; a
signal the supervisor gets that the sentinel does not get too was sent to the
supervisor alone and must be forwarded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import time

FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
# How long a signal may take to reach the sentinel after reaching us. killpg()
# queues the signal to every member before it returns, so the sentinel's copy is
# normally there already; the window covers scheduling delays on a busy machine.
GROUP_WINDOW = 0.1
# A sentinel report older than this belongs to an earlier signal.
STALE = 1.0
PR_SET_PDEATHSIG = 1
# What the sentinel gets when the supervisor dies: it then ends the supervisor's
# process group, so that the kernel's own children do not outlive a supervisor
# killed alone (the kernel itself dies of its own PR_SET_PDEATHSIG).
SUPERVISOR_DIED = signal.SIGRTMIN + 7

_libc: ctypes.CDLL | None = None


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """PR_SET_PDEATHSIG for the calling process (used between fork and exec)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def load_libc() -> None:
    """Load libc before forking, so the child's pre-exec code only calls it."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)


def _end_group_of(leader: int) -> None:
    """SIGKILL the process group ``leader`` led, only if it led one: a supervisor
    started inside someone else's group (a shell's job) must not take that along."""
    with contextlib.suppress(OSError):
        if os.getpgid(0) == leader:
            os.killpg(leader, signal.SIGKILL)


class Forwarder:
    """Decides, for each signal the supervisor takes, whether the kernel needs a copy."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        # Blocked across the fork, so a signal arriving meanwhile waits in the sentinel
        # (inherited mask) instead of killing it.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, (*FORWARDED, SUPERVISOR_DIED))
        pid = os.fork()
        if pid == 0:  # the sentinel
            try:
                os.close(read_fd)
                signal.set_wakeup_fd(-1)
                die_with_parent(SUPERVISOR_DIED)
                if os.getppid() != parent:
                    os._exit(0)
                for sig in FORWARDED:
                    signal.signal(sig, signal.SIG_DFL)
                while True:
                    taken = signal.sigwait((*FORWARDED, SUPERVISOR_DIED))
                    if taken == SUPERVISOR_DIED:
                        _end_group_of(parent)
                        os._exit(0)
                    os.write(write_fd, bytes([int(taken)]))
            finally:
                os._exit(0)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.alive = True
        self.sentinel_pid = pid
        self.fd = read_fd
        self._group: dict[int, float] = {}  # signal -> when the sentinel saw it

    def _read_sentinel(self) -> None:
        try:
            data = os.read(self.fd, 256)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.alive = False  # the sentinel is gone: we can no longer tell
            return
        now = time.monotonic()
        for sig in data:
            self._group[sig] = now

    def was_group_wide(self, sig: int) -> bool:
        """True if the sentinel saw ``sig`` too (waiting up to GROUP_WINDOW for it)."""
        deadline = time.monotonic() + GROUP_WINDOW
        while True:
            self._read_sentinel()
            seen = self._group.pop(sig, None)
            if seen is not None and time.monotonic() - seen < STALE:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.alive:
                # Without the sentinel, forwarding risks a second copy of a group-wide
                # signal; not forwarding would lose every pid-only one. Lose nothing.
                return False
            try:
                select.select([self.fd], [], [], remaining)
            except InterruptedError:
                continue

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        try:
            os.kill(self.sentinel_pid, signal.SIGKILL)
            os.waitpid(self.sentinel_pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def signal_thread(pid: int, tid: int, sig: int) -> None:
    """``sig`` to one thread of ``pid`` (tgkill), so faulthandler dumps that thread's
    stack; a process-directed signal may be taken by any thread not blocking it."""
    load_libc()
    tgkill = getattr(_libc, "tgkill", None)  # glibc 2.30 and later
    if tgkill is None or tgkill(pid, tid, sig) != 0:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
