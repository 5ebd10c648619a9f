"""Wrap any kernelspec in the supervisor on the fly (no install step)."""

from __future__ import annotations

import sys
from typing import Any

from jupyter_client.manager import AsyncKernelManager


def supervisor_command(options: dict[str, str] | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "kernel_doctor.supervise"]
    for name, value in (options or {}).items():
        cmd += [f"--{name}"] if name == "quiet" else [f"--{name}", value]
    return [*cmd, "--"]


class SupervisedKernelManager(AsyncKernelManager):
    """An AsyncKernelManager (as nbclient uses) whose kernel runs under the supervisor.

    ``supervisor_options`` go to the supervisor (``session``, ``cgroup``, ``report``);
    ``command_prefix`` goes before it (e.g. ``systemd-run --scope … --``)."""

    def __init__(self, **kwargs: Any) -> None:
        self.supervisor_options: dict[str, str] = kwargs.pop("supervisor_options", {})
        self.command_prefix: list[str] = kwargs.pop("command_prefix", [])
        super().__init__(**kwargs)

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        return [*self.command_prefix, *supervisor_command(self.supervisor_options), *cmd]
