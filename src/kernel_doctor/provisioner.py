"""A jupyter_client kernel provisioner under which a supervised kernel fails to start
where a plain one does.

Behind the supervisor, a kernelspec whose program does not exist still starts a process
(the supervisor's), which then fails to run the kernel: jupyter_server restarts it until
it gives up, where a plain launch raises ``FileNotFoundError`` and JupyterLab says
"Error Starting Kernel". This provisioner finds the kernel's command behind the
supervisor before the launch and raises as ``Popen`` would have. Everything else is
``LocalProvisioner``'s, and a command without the supervisor is launched untouched.

Who names it: the server extension makes it the server's default provisioner, unless
the user chose one. Twins do not name it in their metadata: jupyter_client refuses a
kernelspec whose provisioner is not installed (``NoSuchKernel``), and a twin must still
start, plain, once kernel-doctor is gone from the server's environment.

With ``supervise`` (off by default; set through ``kernel_provisioner.config`` or
``--SupervisingProvisioner.supervise``) it also puts the supervisor in front of a
kernelspec's command; if that cannot be done, the kernel is launched plain.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from traitlets import Bool

NAME = "kernel-doctor"  # under the ``jupyter_client.kernel_provisioners`` entry point
SUPERVISE_MODULE = "kernel_doctor.supervise"


def kernel_behind_supervisor(cmd: Sequence[str]) -> list[str] | None:
    """The kernel's own command line when ``cmd`` runs the supervisor (as a twin's argv
    or ``launch.supervisor_command`` does), else None."""
    from .kernelspecs import supervisor_at

    cmd = list(cmd)
    at = supervisor_at(cmd)
    head = cmd[at + 1 : at + 3]
    runs = head == ["-m", SUPERVISE_MODULE] or (
        len(head) == 2 and head[0] == "-c" and SUPERVISE_MODULE in head[1]
    )
    if not runs or "--" not in cmd[at:]:
        return None
    cut = cmd.index("--", at)
    return cmd[cut + 1 :] or None


def missing_program(
    argv: Sequence[str], env: Mapping[str, str] | None, cwd: str | None
) -> OSError | None:
    """The error ``Popen(argv, env=env, cwd=cwd)`` would raise for a program that is not
    there or cannot be run, or None."""
    program = os.path.expanduser(argv[0])
    if os.sep in program:
        path = os.path.join(cwd or os.getcwd(), program)
        if not os.path.exists(path):
            return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
        return None
    search = (env if env is not None else os.environ).get("PATH", os.defpath)
    if shutil.which(program, path=search) is None:
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    return None


class SupervisingProvisioner(LocalProvisioner):
    supervise = Bool(
        False, config=True, help="Also run kernelspecs that are not supervised under it."
    )

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        cmd = launch_command(self, cmd, kwargs, supervise=self.supervise)
        return await super().launch_kernel(cmd, **kwargs)


def launch_command(
    provisioner: LocalProvisioner, cmd: list[str], kwargs: Mapping[str, Any], supervise: bool
) -> list[str]:
    """What ``provisioner`` launches for the kernelspec command ``cmd``: ``cmd``, or
    with ``supervise`` ``cmd`` under the supervisor if it can be put there. Raises as
    ``Popen`` would when the kernel behind the supervisor cannot be run. (Also what
    tests/upstream wraps ``LocalProvisioner.launch_kernel`` with, for jupyter_client's
    and nbclient's own test suites.)"""
    kernel = kernel_behind_supervisor(cmd)
    if kernel is None and supervise:
        kernel, cmd = cmd, _supervised(provisioner, cmd)
    if kernel is not None:
        error = missing_program(kernel, kwargs.get("env"), kwargs.get("cwd"))
        if error is not None:
            provisioner.log.error(
                "kernel-doctor: cannot start the kernel %s: %s", kernel, error.strerror
            )
            raise error
    return cmd


def _supervised(provisioner: LocalProvisioner, cmd: list[str]) -> list[str]:
    try:
        from .launch import supervisor_command

        name = getattr(provisioner.parent, "kernel_name", None)
        return [*supervisor_command({"kernel-name": name} if name else None), *cmd]
    except Exception as exc:  # never the reason a kernel will not start
        provisioner.log.warning("kernel-doctor: starting the kernel unsupervised (%s)", exc)
        return cmd


def use_by_default(factory: Any, config: Mapping[str, Any]) -> bool:
    """Make this the default provisioner of ``factory`` (jupyter_client's
    ``KernelProvisionerFactory``) unless the user chose one, in ``config`` or in
    ``JUPYTER_DEFAULT_PROVISIONER_NAME``, or it is not registered. True if it did."""
    chosen = config.get("KernelProvisionerFactory") or {}
    if "default_provisioner_name" in chosen or os.environ.get(factory.default_provisioner_name_env):
        return False
    if NAME not in factory.provisioners:
        return False
    factory.default_provisioner_name = NAME
    return True
