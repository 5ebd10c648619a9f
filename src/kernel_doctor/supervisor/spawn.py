"""Start the kernel as the supervisor's child: its command line and environment (the
agent's boot path and settings), what runs between fork and exec, and the tee on its
stderr."""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass

from ..agent.ceiling import TUNABLES, with_stack_cache
from ..agent.private import append_private
from ..agent.protocol import (
    ENV_DATA_LIMIT,
    ENV_DUMP_SIGNAL,
    ENV_KERNEL_OUTPUT,
    ENV_REPORTS,
    ENV_SESSION,
    ENV_WAKE_FD,
    ENV_WATCH_FD,
    STDERR,
)
from ..probe import procfs
from .ceiling import stack_cache_works
from .signals import die_with_parent, load_libc
from .tee import StderrTee

AGENT_BOOT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "agent", "_boot")
AGENT_MODULE = "kernel_doctor_boot"


def is_ipykernel(argv: list[str]) -> bool:
    return any("ipykernel" in part for part in argv[:4])


@dataclass(frozen=True)
class Launch:
    """What the kernel is started with."""

    argv: list[str]
    session_dir: str
    reports: str
    agent: bool  # load the agent into the kernel
    dump_signal: int | None  # the agent's, when it loads
    cgroup: str | None  # a cgroup directory to move the kernel into


@dataclass(frozen=True)
class Kernel:
    """The started kernel."""

    process: subprocess.Popen[bytes]
    tee: StderrTee  # copies and keeps the tail of its stderr
    cell_r: int  # read end of the pipe on which the agent says a cell started or ended
    watch_w: int  # write end of the pipe on which we wake the agent's watcher thread


def spawn(launch: Launch) -> Kernel:
    cell_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    watch_r, watch_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    argv, env = _command(launch, wake_w, watch_r)
    read_fd, write_fd = os.pipe()
    supervisor_pid = os.getpid()
    load_libc()
    os.set_inheritable(wake_w, launch.agent)
    os.set_inheritable(watch_r, launch.agent)

    def child_setup() -> None:
        # Runs in the kernel's process between fork and exec.
        die_with_parent()
        if os.getppid() != supervisor_pid:
            os._exit(1)  # we died before the line above took effect
        procfs.raise_oom_score()
        if launch.cgroup:
            with open(os.path.join(launch.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    try:
        process = subprocess.Popen(
            argv, env=env, stderr=write_fd, close_fds=False, preexec_fn=child_setup
        )
    finally:
        os.close(write_fd)
        os.close(wake_w)
        os.close(watch_r)
    output = _kernel_output()
    tee = StderrTee(read_fd, output, os.path.join(launch.session_dir, STDERR))
    tee.start()
    return Kernel(process, tee, cell_r, watch_w)


def _command(launch: Launch, wake_w: int, watch_r: int) -> tuple[list[str], dict[str, str]]:
    argv = list(launch.argv)
    env = dict(os.environ)
    env.pop(ENV_KERNEL_OUTPUT, None)  # ours: a kernel's own `run` must not inherit it
    env[ENV_SESSION] = launch.session_dir
    if env.get("JPY_PARENT_PID"):
        # ipykernel exits when its parent changes; its parent is now us.
        env["JPY_PARENT_PID"] = str(os.getpid())
    if launch.agent and launch.dump_signal is not None:
        env[ENV_DUMP_SIGNAL] = str(launch.dump_signal)
        env[ENV_WAKE_FD] = str(wake_w)
        env[ENV_WATCH_FD] = str(watch_r)
        env[ENV_REPORTS] = launch.reports
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


def _kernel_output() -> int:
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


def connection_file(argv: list[str]) -> str | None:
    for i, part in enumerate(argv):
        if part in ("-f", "--f", "--existing") and i + 1 < len(argv):
            return argv[i + 1]
        if part.startswith(("-f=", "--f=")):
            return part.split("=", 1)[1]
    return None
