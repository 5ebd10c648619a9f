"""Wrap any kernelspec in the supervisor on the fly (no install step)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from jupyter_client.manager import AsyncKernelManager


def supervisor_command(options: dict[str, str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "kernel_doctor.supervise"]
    for name, value in (options or {}).items():
        cmd += [f"--{name}"] if name == "quiet" else [f"--{name}", value]
    return [*cmd, "--"]


# A Unix socket's path holds at most 107 bytes; jupyter_client appends "-<port>".
MAX_IPC_PATH = 100


def ipc_transport(session_dir: str, kernel_argv: Sequence[str]) -> dict[str, str]:
    """KernelManager settings for IPC transport: Unix sockets in the private session
    folder, for an ipykernel (other kernels may not read an IPC connection file) where
    this platform has them and their path fits; else none (TCP on localhost). Over IPC
    no port is open to other users of the machine, and ipykernel does not warn that
    its TCP is unencrypted."""
    import zmq

    from .agent.private import private_dir

    # In a folder of their own: zmq makes the sockets by the umask (0755), and only a
    # 0700 folder keeps other users from connecting.
    folder = os.path.join(session_dir, "ipc")
    ip = os.path.join(folder, "kernel")
    ipykernel = any("ipykernel" in part for part in kernel_argv)
    if not ipykernel or not zmq.has("ipc") or len(ip.encode()) > MAX_IPC_PATH:
        return {}
    try:
        private_dir(folder)
    except OSError:
        return {}
    return {"transport": "ipc", "ip": ip}


class SupervisedKernelManager(AsyncKernelManager):
    """An AsyncKernelManager (as nbclient uses) whose kernel runs under the supervisor.

    ``supervisor_options`` go to the supervisor (``session``, ``cgroup``, ``report``);
    ``command_prefix`` goes before it (e.g. ``systemd-run --scope … --``)."""

    def __init__(self, **kwargs: Any) -> None:
        self.supervisor_options: dict[str, str] = kwargs.pop("supervisor_options", {})
        self.command_prefix: list[str] = kwargs.pop("command_prefix", [])
        # Added to the kernel's environment, whoever starts it (papermill's client
        # passes none of its own).
        self.kernel_env: dict[str, str] = kwargs.pop("kernel_env", {})
        super().__init__(**kwargs)

    # AsyncKernelManager's start_kernel is a coroutine; jupyter_client types it as the
    # synchronous KernelManager's.
    async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
        if self.kernel_env:
            kw["env"] = {**(kw.get("env") or os.environ), **self.kernel_env}
        await super().start_kernel(**kw)

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        return [*self.command_prefix, *supervisor_command(self.supervisor_options), *cmd]
