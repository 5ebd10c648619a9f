"""Wraps jupyter_client's ``LocalProvisioner`` so that every kernel it launches runs
under the supervisor, as ``SupervisingProvisioner`` does with ``supervise`` on: for
``supervised`` (the pytest plugin) and ``sitecustomize`` (the subprocesses), both in this
folder. Imports neither pytest nor jupyter_client: ``sitecustomize`` loads it into every
Python process of a supervised run, kernels included.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import shlex
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

LAUNCHES = "KERNEL_DOCTOR_UPSTREAM_LAUNCHES"  # the file each wrapped launch adds a line to
PROVISIONER_MODULE = "jupyter_client.provisioning.local_provisioner"


def wrap(local_provisioner: ModuleType) -> None:
    """Put the supervisor in front of the command ``LocalProvisioner.launch_kernel`` runs."""
    cls = local_provisioner.LocalProvisioner
    original = cls.launch_kernel
    if getattr(original, "supervised", False):
        return

    @functools.wraps(original)
    async def launch_kernel(self: Any, cmd: list[str], **kwargs: Any) -> Any:
        from kernel_doctor.provisioner import launch_command

        supervised = launch_command(self, cmd, kwargs, supervise=True)
        if supervised != cmd:
            _note(cmd)
        return await original(self, supervised, **kwargs)

    launch_kernel.supervised = True  # type: ignore[attr-defined]
    cls.launch_kernel = launch_kernel


def _note(cmd: Sequence[str]) -> None:
    path = os.environ.get(LAUNCHES)
    if path:
        with open(path, "a") as f:  # one write of one line: O_APPEND keeps lines whole
            f.write(f"{os.getpid()}: {shlex.join(cmd)}\n")


def launches() -> list[str]:
    """The wrapped launches so far, of this process and its subprocesses."""
    try:
        with open(os.environ[LAUNCHES]) as f:
            return f.read().splitlines()
    except (KeyError, OSError):
        return []


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the other finders find jupyter_client's provisioner
    module, and wraps its class once the module has run."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != PROVISIONER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _Wrapping(spec.loader)
        return spec


class _Wrapping(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        wrap(module)


def wrap_on_import() -> None:
    """Wrap ``LocalProvisioner`` in this process, now or once jupyter_client imports it."""
    module = sys.modules.get(PROVISIONER_MODULE)
    if module is not None:
        wrap(module)
    elif not any(isinstance(finder, _WrapOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WrapOnImport())
