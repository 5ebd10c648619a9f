"""Start the kernel, watch it, and turn its end into a diagnosis."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from ..agent.ceiling import TUNABLES, with_stack_cache
from ..agent.private import append_private
from ..agent.protocol import (
    ENV_DATA_LIMIT,
    ENV_DUMP_SIGNAL,
    ENV_KERNEL_OUTPUT,
    ENV_REPORTS,
    ENV_SESSION,
    ENV_WAKE_FD,
    STATE,
    STDERR,
    dump_signal,
)
from ..probe import procfs
from .ceiling import stack_cache_works
from .signals import FORWARDED, Forwarder, die_with_parent, load_libc
from .tee import StderrTee

if TYPE_CHECKING:
    from ..probe.base import MemorySource
    from .session import Session

AGENT_BOOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "agent", "_boot")
AGENT_MODULE = "kernel_doctor_boot"
# Signals whose arrival means the kernel's end was asked for, not suffered.
ENDING = {signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}
TAIL_SAVE_INTERVAL = 2.0  # seconds between saves of the stderr tail, when it grew


def _note_signal(signum: int, frame: object) -> None:
    """Handlers only wake the main loop (through set_wakeup_fd); it does the work."""


class SupervisionUnavailable(Exception):
    """Supervision cannot start here; the kernel runs plain instead."""


def is_ipykernel(argv: list[str]) -> bool:
    return any("ipykernel" in part for part in argv[:4])


class Supervisor:
    def __init__(self, kernel_argv: list[str], options: dict[str, str]) -> None:
        # Read first: the launcher may exit while we start. Only a launcher that asked
        # ipykernel to watch it (JPY_PARENT_PID) expects the kernel to follow it out.
        self.original_ppid = os.getppid()
        self.follow_launcher = bool(os.environ.get("JPY_PARENT_PID"))
        self.kernel_argv = kernel_argv
        self.options = options
        self.cgroup = options.get("cgroup")
        self.session = self._open_session()
        from ..paths import reports_dir

        self.reports = reports_dir(create=False)
        # KERNEL_DOCTOR_AGENT=0: supervise without loading the agent into the kernel.
        self.agent = is_ipykernel(kernel_argv) and os.environ.get("KERNEL_DOCTOR_AGENT") != "0"
        self.dump_signal = dump_signal() if self.agent else None
        self.requested: str | None = None
        self.started_epoch = time.time()
        self.started = time.monotonic()

    # -- start -------------------------------------------------------------------

    def _open_session(self) -> Session:
        from ..paths import fallback_sessions_dir
        from .session import Session

        if "session" in self.options:
            try:
                return Session(self.options["session"])
            except OSError as exc:
                raise SupervisionUnavailable(f"cannot write evidence ({_why(exc)})") from exc
        try:
            return Session.create()
        except OSError as exc:
            # An unwritable runtime dir costs the stored report, not the diagnosis.
            try:
                session = Session.create(fallback_sessions_dir())
            except OSError as again:
                raise SupervisionUnavailable(
                    f"cannot write evidence ({_why(exc)}; {_why(again)})"
                ) from again
            sys.stderr.write(
                f"kernel-doctor: warning: cannot write to the runtime dir ({_why(exc)}); "
                f"evidence goes to {os.path.dirname(session.directory)} and a death's "
                "diagnosis to this log only\n"
            )
            return session

    def _kernel_command(self) -> tuple[list[str], dict[str, str]]:
        argv = list(self.kernel_argv)
        env = dict(os.environ)
        env.pop(ENV_KERNEL_OUTPUT, None)  # ours: a kernel's own `run` must not inherit it
        env[ENV_SESSION] = self.session.directory
        if env.get("JPY_PARENT_PID"):
            # ipykernel exits when its parent changes; its parent is now us.
            env["JPY_PARENT_PID"] = str(os.getpid())
        if self.agent and self.dump_signal is not None:
            env[ENV_DUMP_SIGNAL] = str(self.dump_signal)
            env[ENV_WAKE_FD] = str(self.wake_w)
            env[ENV_REPORTS] = self.reports
            with contextlib.suppress(ImportError, OSError, ValueError):
                import resource

                env[ENV_DATA_LIMIT] = str(resource.getrlimit(resource.RLIMIT_DATA)[0])
            if stack_cache_works():
                # glibc's stack cache, which the agent fills: threads start under the
                # allocation layer's tight ceiling (agent/ceiling.py says why).
                env[TUNABLES] = with_stack_cache(env.get(TUNABLES))
            path = env.get("PYTHONPATH")
            env["PYTHONPATH"] = AGENT_BOOT + (os.pathsep + path if path else "")
            argv.append(f"--IPKernelApp.extra_extensions={AGENT_MODULE}")
        return argv, env

    def _child_setup(self) -> None:
        # Runs in the kernel's process between fork and exec.
        die_with_parent()
        if os.getppid() != self.supervisor_pid:
            os._exit(1)  # we died before the line above took effect
        procfs.raise_oom_score()
        if self.cgroup:
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.cell_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        argv, env = self._kernel_command()
        read_fd, write_fd = os.pipe()
        self.supervisor_pid = os.getpid()
        load_libc()
        os.set_inheritable(self.wake_w, self.agent)
        try:
            process = subprocess.Popen(
                argv, env=env, stderr=write_fd, close_fds=False, preexec_fn=self._child_setup
            )
        finally:
            os.close(write_fd)
            os.close(self.wake_w)
        output = self._kernel_output()
        self.tee = StderrTee(read_fd, output, os.path.join(self.session.directory, STDERR))
        self.tee.start()
        return process

    def _kernel_output(self) -> int:
        """Where the kernel's stderr is copied: to ours, or to the file the caller names
        in ENV_KERNEL_OUTPUT (``run`` keeps its stderr for its progress and result, and
        our own warnings). An environment variable, not an option: a supervisor that
        does not know it still runs, and copies to its stderr as before."""
        path = os.environ.get(ENV_KERNEL_OUTPUT)
        if path:
            try:
                return append_private(path)
            except OSError:
                pass  # the kernel's messages are worth more on our stderr than lost
        return 2

    # -- run ---------------------------------------------------------------------

    def run(self) -> int:
        try:
            wake_r = self._prepare()
        except Exception as exc:  # nothing started yet: run the kernel plain instead
            self._unprepare()
            raise SupervisionUnavailable(f"cannot set up ({type(exc).__name__}: {exc})") from exc
        try:
            self.process = self._spawn()
        except (OSError, subprocess.SubprocessError) as exc:
            self._unprepare()
            sys.stderr.write(f"kernel-doctor: cannot start the kernel: {exc}\n")
            return 127
        pid = self.process.pid
        status = None
        try:
            self._after_spawn(pid)
            status = self._loop(pid, wake_r)
        except Exception as exc:  # supervision failed: the kernel must not notice
            sys.stderr.write(f"kernel-doctor: supervision stopped ({type(exc).__name__}: {exc})\n")
        if status is None:
            status = self._wait_plain(pid, wake_r)
        return self._finish(status)

    def _prepare(self) -> int:
        """Sentinel, wake-up pipe and handlers; returns the wake-up pipe's read end."""
        # The sentinel is forked before any handler or thread exists in this process.
        self.forwarder = Forwarder()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in (*FORWARDED, signal.SIGCHLD):
            # A signal the launcher ignores (nohup, `&` in sh) stays ignored, for us
            # and, through exec, for the kernel.
            if signal.getsignal(sig) != signal.SIG_IGN:
                signal.signal(sig, _note_signal)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        return wake_r

    def _unprepare(self) -> None:
        signal.set_wakeup_fd(-1)
        forwarder = getattr(self, "forwarder", None)
        if forwarder is not None:
            forwarder.close()
        self.session.remove()

    def _after_spawn(self, pid: int) -> None:
        from ..probe.limits import find_memory_source
        from ..probe.system import address_space_limits
        from .recovery import recover_stale_sessions
        from .sampler import MARKS, Sampler

        source: MemorySource = find_memory_source(pid)
        self.source = source
        self.oom_before = source.oom_kills()
        guard = None
        if self.agent:
            from .guard import ENV_GUARD, make_guard

            setting = self.options.get("guard") or os.environ.get(ENV_GUARD)
            if setting:
                from ..agent.settings import GUARD_DEFAULT, guard_setting

                try:
                    guard_setting(setting)
                except ValueError as exc:  # the guard stays, at its default
                    sys.stderr.write(f"kernel-doctor: warning: {exc}; using {GUARD_DEFAULT}\n")
            guard = make_guard(setting, source.limit, self.session.directory, pid)
        from ..agent.protocol import LimitRecord, Meta

        limit = source.limit
        self.session.write_meta(
            Meta(
                supervisor_pid=os.getpid(),
                supervisor_start=procfs.start_time(os.getpid()),
                kernel_pid=pid,
                started=self.started_epoch,
                host=os.uname().nodename,
                kernel_argv=tuple(self.kernel_argv),
                connection_file=connection_file(self.kernel_argv),
                kernel_name=self.options.get("kernel-name"),
                session_name=os.environ.get("JPY_SESSION_NAME") or None,
                agent=self.agent,
                limit=LimitRecord(limit.limit_bytes, limit.kind, limit.source, limit.path),
                oom_kills_before=self.oom_before,
                # The cgroup's high-water mark covers its whole life, earlier kernels'
                # included: it says something about this kernel only if it rises.
                peak_before=source.peak(),
                rlimits=address_space_limits(),
                guard=guard.describe() if guard is not None else None,
            )
        )
        if self.session.write_error is not None:
            sys.stderr.write(
                f"kernel-doctor: warning: cannot write evidence ({_why(self.session.write_error)})"
                "; a death's diagnosis will be less precise\n"
            )
        self.sampler = Sampler(source, self.session, pid, self.started, self.dump_signal)
        self.sampler.guard = guard
        marks = [int(source.limit.limit_bytes * m) for m in MARKS]
        if guard is not None and guard.enabled:
            marks.append(guard.wake_mark())
        # KERNEL_DOCTOR_EVENTS=0 samples without cgroup notifications: what cgroup v2
        # offers for usage marks, so benchmarks can measure that case on v1 too.
        events = os.environ.get("KERNEL_DOCTOR_EVENTS") != "0"
        self.watch = source.watch(marks) if events and source.limit.kind != "system" else None
        from .control import Control

        self.inspector = Control(self.session.directory, pid, self.dump_signal)
        self.sampler.sample()
        if "session" not in self.options:  # a caller's own session dir is not ours to scan
            recover_stale_sessions(os.path.dirname(self.session.directory), self.session.directory)
        if self.agent:
            from ..reports.notice import leave_notice

            leave_notice(self.session.directory, self.session.meta)

    def _loop(self, pid: int, wake_r: int) -> int:
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        if self.watch is not None:
            poller.register(self.watch.fd, self.watch.events)
        if self.agent:
            poller.register(self.cell_r, select.POLLIN)
        inspector = self.inspector
        if inspector.fd is not None:
            poller.register(inspector.fd, select.POLLIN)
        state_path = os.path.join(self.session.directory, STATE)
        self._next_tail_save = 0.0
        forced = False  # a cgroup event asked for a sample, busy or not
        while True:
            due = min(self.sampler.next_due, inspector.due())
            timeout = max(0.0, due - time.monotonic())
            for fd, _ in poller.poll(timeout * 1000):
                if fd == wake_r:
                    self._on_signals(os.read(wake_r, 512), pid)
                elif self.watch is not None and fd == self.watch.fd:
                    self.source.drain()
                    self.sampler.next_due = 0
                    forced = True
                elif fd == inspector.fd:  # kernel-doctor where
                    inspector.on_control()
                elif fd == self.cell_r:  # a cell started or ended
                    try:
                        pokes = os.read(self.cell_r, 4096)
                        if pokes:
                            if self.sampler.state is None:
                                self.sampler.attach_state(state_path)
                            self.sampler.poked(pokes)
                        else:  # no writer left: the kernel is ending
                            poller.unregister(self.cell_r)
                    except BlockingIOError:
                        pass
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                self._note_late_signals(wake_r)
                return status
            inspector.tick()  # a no-op until a look or an interrupt is pending
            if time.monotonic() >= self.sampler.next_due:
                if self.sampler.state is None and self.agent:
                    self.sampler.attach_state(state_path)
                self.sampler.sample(force=forced)
                forced = False
                if time.monotonic() >= self._next_tail_save:
                    self.tee.save(if_changed=True)
                    self._next_tail_save = time.monotonic() + TAIL_SAVE_INTERVAL
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
        for sig in data:
            if sig == signal.SIGCHLD:
                continue
            group = self.forwarder.was_group_wide(sig)
            if sig in ENDING and self.requested is None:
                self.requested = procfs.signal_name(sig)
            self.session.event("signal", signal=procfs.signal_name(sig), group=group)
            inspector = getattr(self, "inspector", None)
            if sig == signal.SIGINT and inspector is not None:
                inspector.interrupted()
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
        self.forwarder.close()
        tee = getattr(self, "tee", None)
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

        source = getattr(self, "source", None)
        if source is not None:
            source.close()
        guard = getattr(getattr(self, "sampler", None), "guard", None)
        if guard is not None and self.session.meta is not None:
            # %doctor guard may have changed it since the start
            self.session.meta = dataclasses.replace(self.session.meta, guard=guard.describe())
        evidence = collect(
            self.session.directory,
            status=status,
            ended=time.time(),
            requested=self.requested,
            stderr_tail=tee.tail() if (tee := getattr(self, "tee", None)) else "",
            source=source,
            sampler=getattr(self, "sampler", None),
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


def _why(exc: OSError) -> str:
    return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)


def connection_file(argv: list[str]) -> str | None:
    for i, part in enumerate(argv):
        if part in ("-f", "--f", "--existing") and i + 1 < len(argv):
            return argv[i + 1]
        if part.startswith(("-f=", "--f=")):
            return part.split("=", 1)[1]
    return None


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
