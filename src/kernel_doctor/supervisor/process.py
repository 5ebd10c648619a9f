"""The supervisor's run: signal handling first, then the kernel (``spawn``) and what
watches it (``monitor``), the main loop, and the kernel's end turned into a diagnosis.
Each phase leaves its state in one object (``Signals``, ``Kernel``, ``Monitor``), None
until that phase is reached."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..agent.protocol import STATE, dump_signal
from ..probe import procfs
from .monitor import Monitor, Watched, why
from .signals import FORWARDED, Forwarder
from .spawn import AGENT_BOOT, Kernel, Launch, is_ipykernel, spawn

if TYPE_CHECKING:
    from .session import Session

__all__ = ["AGENT_BOOT", "SupervisionUnavailable", "Supervisor", "exit_like"]

# Signals whose arrival means the kernel's end was asked for, not suffered.
ENDING = {signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
TAIL_SAVE_INTERVAL = 2.0  # seconds between saves of the stderr tail, when it grew


def _note_signal(signum: int, frame: object) -> None:
    """Handlers only wake the main loop (through set_wakeup_fd); it does the work."""


class SupervisionUnavailable(Exception):
    """Supervision cannot start here; the kernel runs plain instead."""


@dataclass(frozen=True)
class Signals:
    """Made before the kernel starts: the sentinel and the wake-up pipe's read end,
    through which signal handlers wake the main loop."""

    forwarder: Forwarder
    wake_r: int


class Supervisor:
    def __init__(self, kernel_argv: list[str], options: dict[str, str]) -> None:
        # Read first: the launcher may exit while we start. Only a launcher that asked
        # ipykernel to watch it (JPY_PARENT_PID) expects the kernel to follow it out.
        self.original_ppid = os.getppid()
        self.follow_launcher = bool(os.environ.get("JPY_PARENT_PID"))
        self.kernel_argv = kernel_argv
        self.options = options
        self.session = self._open_session()
        from ..paths import reports_dir

        self.reports = reports_dir(create=False)
        # KERNEL_DOCTOR_AGENT=0: supervise without loading the agent into the kernel.
        self.agent = is_ipykernel(kernel_argv) and os.environ.get("KERNEL_DOCTOR_AGENT") != "0"
        self.dump_signal = dump_signal() if self.agent else None
        self.requested: str | None = None
        self.started_epoch = time.time()
        self.started = time.monotonic()
        # Each phase's state, made as run() reaches it.
        self.signals: Signals | None = None
        self.kernel: Kernel | None = None
        self.monitor: Monitor | None = None

    # -- start -------------------------------------------------------------------

    def _open_session(self) -> Session:
        from ..paths import fallback_sessions_dir
        from .session import Session

        if "session" in self.options:
            try:
                return Session(self.options["session"])
            except OSError as exc:
                raise SupervisionUnavailable(f"cannot write evidence ({why(exc)})") from exc
        try:
            return Session.create()
        except OSError as exc:
            # An unwritable data dir costs the stored report, not the diagnosis.
            try:
                session = Session.create(fallback_sessions_dir())
            except OSError as again:
                raise SupervisionUnavailable(
                    f"cannot write evidence ({why(exc)}; {why(again)})"
                ) from again
            sys.stderr.write(
                f"kernel-doctor: warning: cannot write to the Jupyter data dir ({why(exc)}); "
                f"evidence goes to {os.path.dirname(session.directory)} and a death's "
                "diagnosis to this log only\n"
            )
            return session

    # -- run ---------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.signals = signals = self._prepare()
        except Exception as exc:  # nothing started yet: run the kernel plain instead
            self._unprepare()
            raise SupervisionUnavailable(f"cannot set up ({type(exc).__name__}: {exc})") from exc
        launch = Launch(
            self.kernel_argv,
            self.session.directory,
            self.reports,
            self.agent,
            self.dump_signal,
            self.options.get("cgroup"),
        )
        try:
            self.kernel = kernel = spawn(launch)
        except (OSError, subprocess.SubprocessError) as exc:
            self._unprepare()
            sys.stderr.write(f"kernel-doctor: cannot start the kernel: {exc}\n")
            return 127
        pid = kernel.process.pid
        status = None
        try:
            self.monitor = Monitor.find(pid)
            self.monitor.start(self._watched(pid))
            status = self._loop(pid, signals.wake_r, kernel, self.monitor)
        except Exception as exc:  # supervision failed: the kernel must not notice
            sys.stderr.write(f"kernel-doctor: supervision stopped ({type(exc).__name__}: {exc})\n")
        if status is None:
            status = self._wait_plain(pid, signals.wake_r)
        return self._finish(status)

    def _prepare(self) -> Signals:
        """Sentinel, wake-up pipe and handlers."""
        # The sentinel is forked before any handler or thread exists in this process.
        forwarder = Forwarder()
        try:
            wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            for sig in (*FORWARDED, signal.SIGCHLD):
                # A signal the launcher ignores (nohup, `&` in sh) stays ignored, for us
                # and, through exec, for the kernel.
                if signal.getsignal(sig) != signal.SIG_IGN:
                    signal.signal(sig, _note_signal)
            signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        except BaseException:
            forwarder.close()
            raise
        return Signals(forwarder, wake_r)

    def _unprepare(self) -> None:
        signal.set_wakeup_fd(-1)
        if self.signals is not None:
            self.signals.forwarder.close()
        self.session.remove()

    def _watched(self, pid: int) -> Watched:
        return Watched(
            pid=pid,
            argv=self.kernel_argv,
            options=self.options,
            session=self.session,
            agent=self.agent,
            dump_signal=self.dump_signal,
            started_epoch=self.started_epoch,
            started=self.started,
            watch_fd=self.kernel.watch_w if self.kernel is not None else None,
        )

    def _loop(self, pid: int, wake_r: int, kernel: Kernel, monitor: Monitor) -> int:
        sampler, control, events = monitor.sampler, monitor.control, monitor.events
        assert sampler is not None and control is not None  # Monitor.start made them
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        if events is not None:
            poller.register(events.fd, events.events)
        if self.agent:
            poller.register(kernel.cell_r, select.POLLIN)
        if control.fd is not None:
            poller.register(control.fd, select.POLLIN)
        state_path = os.path.join(self.session.directory, STATE)
        next_tail_save = 0.0
        forced = False  # a cgroup event asked for a sample, busy or not
        while True:
            due = min(sampler.next_due, control.due())
            timeout = max(0.0, due - time.monotonic())
            for fd, _ in poller.poll(timeout * 1000):
                if fd == wake_r:
                    self._on_signals(os.read(wake_r, 512), pid)
                elif events is not None and fd == events.fd:
                    monitor.source.drain()
                    sampler.next_due = 0
                    forced = True
                elif fd == control.fd:  # kernel-doctor where
                    control.on_control()
                elif fd == kernel.cell_r:  # a cell started or ended
                    try:
                        pokes = os.read(kernel.cell_r, 4096)
                        if pokes:
                            if sampler.state is None:
                                sampler.attach_state(state_path)
                            sampler.poked(pokes)
                        else:  # no writer left: the kernel is ending
                            poller.unregister(kernel.cell_r)
                    except BlockingIOError:
                        pass
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self._note_late_signals(wake_r)
                return status
            control.tick()  # a no-op until a look or an interrupt is pending
            if time.monotonic() >= sampler.next_due:
                if sampler.state is None and self.agent:
                    sampler.attach_state(state_path)
                sampler.sample(force=forced)
                forced = False
                if time.monotonic() >= next_tail_save:
                    kernel.tee.save(if_changed=True)
                    next_tail_save = time.monotonic() + TAIL_SAVE_INTERVAL
                if (
                    self.follow_launcher
                    and os.getppid() != self.original_ppid
                    and self.requested is None
                ):
                    # The launcher is gone; ipykernel would exit by itself now.
                    self.requested = "launcher exited"
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)

    def _on_signals(self, data: bytes, pid: int) -> None:
        assert self.signals is not None  # signals reach us only once it is made
        control = self.monitor.control if self.monitor is not None else None
        for sig in data:
            if sig == signal.SIGCHLD:
                continue
            group = self.signals.forwarder.was_group_wide(sig)
            if sig in ENDING and self.requested is None:
                self.requested = procfs.signal_name(sig)
            self.session.event("signal", signal=procfs.signal_name(sig), group=group)
            if sig == signal.SIGINT and control is not None:
                control.interrupted()
            if not group:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def _note_late_signals(self, wake_r: int) -> None:
        """Signals that arrived while we were busy (e.g. waiting out GROUP_WINDOW for
        an earlier one) and whose effect, the kernel's end, we saw first: a group-wide
        SIGTERM then still means the end was asked for."""
        try:
            data = os.read(wake_r, 512)
        except OSError:
            return
        for sig in data:
            if sig in ENDING and self.requested is None:
                self.requested = procfs.signal_name(sig)
            if sig != signal.SIGCHLD:
                self.session.event("signal", signal=procfs.signal_name(sig), group=None)

    def _wait_plain(self, pid: int, wake_r: int) -> int:
        """Wait for the kernel without supervision, still forwarding signals."""
        try:
            while True:
                ready = select.select([wake_r], [], [], 1.0)[0]
                if ready:
                    self._on_signals(os.read(wake_r, 512), pid)
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return status
        except ChildProcessError:
            return 0
        except Exception:
            pass
        # Even forwarding failed: let signals act on us as if we were not here.
        for sig in FORWARDED:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
        while True:
            try:
                return os.waitpid(pid, 0)[1]
            except InterruptedError:
                continue
            except ChildProcessError:
                return 0

    # -- end ---------------------------------------------------------------------

    def _finish(self, status: int) -> int:
        signal.set_wakeup_fd(-1)
        assert self.signals is not None  # run() finishes only what it prepared
        self.signals.forwarder.close()
        tee = self.kernel.tee if self.kernel is not None else None
        if tee is not None:
            tee.drain(0.2)
            tee.save()
        try:
            self._diagnose(status)
        except Exception as exc:
            sys.stderr.write(f"kernel-doctor: could not diagnose ({type(exc).__name__}: {exc})\n")
        if tee is not None:
            tee.hand_off()
        return exit_like(status)

    def _diagnose(self, status: int) -> None:
        from .collect import collect

        source = self.monitor.source if self.monitor is not None else None
        sampler = self.monitor.sampler if self.monitor is not None else None
        tee = self.kernel.tee if self.kernel is not None else None
        if source is not None:
            source.close()
        guard = sampler.guard if sampler is not None else None
        if guard is not None and self.session.meta is not None:
            # %doctor guard may have changed it since the start
            self.session.meta = dataclasses.replace(self.session.meta, guard=guard.describe())
        evidence = collect(
            self.session.directory,
            status=status,
            ended=time.time(),
            requested=self.requested,
            stderr_tail=tee.tail() if tee is not None else "",
            source=source,
            sampler=sampler,
            meta=self.session.meta,
        )
        from ..diagnosis import diagnose
        from ..reports.store import publish

        diagnosis = diagnose(evidence)
        keep = "session" in self.options
        if diagnosis is None:
            if not keep:
                self.session.remove()
            return
        publish(
            evidence,
            diagnosis,
            self.session.directory,
            self.options.get("report"),
            quiet="quiet" in self.options,
        )
        if not keep:
            self.session.remove()


def exit_like(status: int) -> int:
    """End this process the way the kernel ended: same code, or same signal."""
    if os.WIFEXITED(status):
        return int(os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        import resource

        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core dump of ours
        sys.stdout.flush()
        sys.stderr.flush()
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # these cannot be caught anyway
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), sig)
        return 128 + sig
    return 1
