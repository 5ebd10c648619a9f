"""Supervised twins of kernelspecs: what ``install``, ``uninstall`` and ``status`` do.

A twin is a copy of a kernelspec (its resources, env and metadata) whose ``argv``
runs the original command under the supervisor. Its ``argv`` starts with a short
bootstrap rather than ``-m kernel_doctor.supervise``, so that a twin whose
kernel-doctor was uninstalled since still starts the plain kernel, with a warning.
Twins carry ``metadata.kernel_doctor``; nothing without that mark is ever
overwritten or removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from . import __version__
from ._errors import UsageError

MARK = "kernel_doctor"
SUFFIX = "-doctor"
# Runs in the supervisor's Python. The notebook's directory is the kernel's working
# directory: drop it from sys.path so a user's file cannot shadow the supervisor.
BOOT = (
    "import sys\n"
    "sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
    "try:\n"
    "    from kernel_doctor.supervise import main\n"
    "except Exception as exc:\n"
    "    import os\n"
    "    kernel = sys.argv[sys.argv.index('--') + 1:]\n"
    "    sys.stderr.write(f'kernel-doctor: cannot load the supervisor ({exc}); '\n"
    "                     'starting the kernel unsupervised\\n')\n"
    "    sys.stderr.flush()\n"
    "    os.execvp(kernel[0], kernel)\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
# Where POSIX has a shell, the twin starts through it: if the supervisor's Python is gone
# altogether (its environment deleted, as pipx and uv tool uninstalls do), the kernel
# still starts plain. $0 is that Python; BOOT and the kernel's argv follow.
GUARD = (
    'if [ -x "$0" ]; then exec "$0" "$@"; fi\n'
    'while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done\n'
    "shift\n"
    'echo "kernel-doctor: $0 is not there any more; starting the kernel unsupervised" >&2\n'
    'exec "$@"\n'
)
SHELL = "/bin/sh"
# BOOT's first two lines, for status to import kernel-doctor as BOOT does.
DROP_CWD = BOOT[: BOOT.index("try:")]
# argv[0] values jupyter_client replaces with its own Python when it launches a spec.
BARE_PYTHON = {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"}


@dataclass(frozen=True)
class SpecInfo:
    name: str
    resource_dir: str
    display_name: str
    argv: tuple[str, ...]
    twin_of: str | None  # the source kernelspec's name, for a twin written by us
    supervised: bool  # a twin, or any spec whose argv runs the supervisor
    provisioner: str | None = None  # the kernel provisioner its metadata names, if any


def _manager() -> Any:
    from jupyter_client.kernelspec import KernelSpecManager

    return KernelSpecManager()


def _builtin(resource_dir: str) -> dict[str, Any] | None:
    """The kernel.json of ipykernel's built-in python3, which Jupyter offers from
    ipykernel's own resource dir (logos, no kernel.json) where no python3 kernelspec
    is installed as files."""
    try:
        from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    except Exception:
        return None
    if os.path.realpath(resource_dir) != os.path.realpath(RESOURCES):
        return None
    return dict(get_kernel_dict())


def _load(resource_dir: str) -> dict[str, Any]:
    path = os.path.join(resource_dir, "kernel.json")
    if not os.path.exists(path):
        builtin = _builtin(resource_dir)
        if builtin is not None:
            return builtin
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the kernelspec in {resource_dir}: {exc}") from exc
    if not isinstance(value, dict) or not isinstance(value.get("argv"), list):
        raise UsageError(f"the kernelspec in {resource_dir} has no argv list")
    return value


def supervisor_at(argv: list[str] | tuple[str, ...]) -> int:
    """The index of the supervisor's Python in a twin's argv (after the shell guard)."""
    return 3 if len(argv) > 3 and argv[0] == SHELL and argv[2] == GUARD else 0


def _info(name: str, resource_dir: str) -> SpecInfo:
    spec = _load(resource_dir)
    metadata = spec.get("metadata") or {}
    mark = metadata.get(MARK)
    named = metadata.get("kernel_provisioner")
    argv = tuple(str(a) for a in spec["argv"])
    runs_supervisor = any("kernel_doctor" in part for part in argv[:4])
    return SpecInfo(
        name=name,
        resource_dir=resource_dir,
        display_name=str(spec.get("display_name") or name),
        argv=argv,
        twin_of=str(mark.get("source")) if isinstance(mark, dict) else None,
        supervised=isinstance(mark, dict) or runs_supervisor,
        # Without a name jupyter_client uses the server's default provisioner.
        provisioner=str(named["provisioner_name"])
        if isinstance(named, dict) and named.get("provisioner_name")
        else None,
    )


def all_specs() -> list[SpecInfo]:
    found = []
    for name, directory in sorted(_manager().find_kernel_specs().items()):
        try:
            found.append(_info(name, directory))
        except UsageError:
            continue  # a broken spec elsewhere is not ours to report on
    return found


def find(name: str) -> SpecInfo:
    specs = {s.name: s for s in all_specs()}
    name = name.lower()  # Jupyter's kernel names are case-insensitive
    if name not in specs:
        known = ", ".join(sorted(specs)) or "none"
        raise UsageError(f"no kernelspec named {name!r} (installed: {known})")
    return specs[name]


def twin_spec(source: SpecInfo, display_name: str | None, kernel_name: str) -> dict[str, Any]:
    """The twin's kernel.json: the source's, with its command behind the supervisor."""
    spec = _load(source.resource_dir)
    argv = [str(a) for a in spec["argv"]]
    if argv and argv[0] in BARE_PYTHON:
        # jupyter_client swaps a bare "python" for its own interpreter, but only in
        # argv[0]; behind the supervisor it would be looked up on PATH instead.
        argv[0] = sys.executable
    command = [sys.executable, "-c", BOOT, "--kernel-name", kernel_name, "--", *argv]
    guarded = os.name == "posix" and os.access(SHELL, os.X_OK)
    spec["argv"] = [SHELL, "-c", GUARD, *command] if guarded else command
    spec["display_name"] = display_name or f"{source.display_name} (kernel-doctor)"
    metadata = dict(spec.get("metadata") or {})
    metadata[MARK] = {"source": source.name, "version": __version__, "python": sys.executable}
    spec["metadata"] = metadata
    return spec


def install(
    sources: list[str],
    *,
    user: bool,
    prefix: str | None,
    name: str | None,
    display_name: str | None,
) -> list[tuple[str, str]]:
    """Write a twin of each source kernelspec; returns (name, directory) pairs."""
    if name and len(sources) != 1:
        raise UsageError("--name needs exactly one kernelspec to install")
    infos = [find(s) for s in sources]
    for info in infos:
        if info.supervised:
            raise UsageError(
                f"kernelspec {info.name!r} is already supervised; install its source "
                f"({info.twin_of or 'the plain kernelspec'}) instead"
            )
    manager = _manager()
    existing = manager.find_kernel_specs()
    # Every target is checked before any is written: all of them, or none.
    planned = []
    for info in infos:
        target = _valid_name(name or f"{info.name}{SUFFIX}")
        destination = _destination(manager, target, user=user, prefix=prefix)
        # The destination is what install_kernel_spec would replace; the spec Jupyter
        # finds under that name now is what the twin would shadow.
        for where in (destination, existing.get(target)):
            if where and os.path.lexists(where) and not _ours(target, where):
                raise UsageError(
                    f"a kernelspec named {target!r} already exists at {where} "
                    "and was not written by kernel-doctor; pick another --name"
                )
        planned.append((info, target))
    done = []
    for info, target in planned:
        with tempfile.TemporaryDirectory(prefix="kernel-doctor-spec-") as tmp:
            staged = os.path.join(tmp, target)
            shutil.copytree(info.resource_dir, staged)
            with open(os.path.join(staged, "kernel.json"), "w", encoding="utf-8") as f:
                json.dump(twin_spec(info, display_name, target), f, indent=1)
            try:
                path = manager.install_kernel_spec(staged, target, user=user, prefix=prefix)
            except OSError as exc:
                raise UsageError(
                    f"cannot write the kernelspec {target!r}: {exc.strerror or exc}"
                    f"{f' ({exc.filename})' if exc.filename else ''}; try --user"
                ) from exc
        done.append((target, str(path)))
    return done


def _valid_name(name: str) -> str:
    """``name`` as Jupyter stores it (lower case), refused unless it is a plain
    kernel name: install_kernel_spec replaces whatever directory it names."""
    name = name.lower()
    if not re.fullmatch(r"[a-z0-9._-]+", name) or not name.strip("."):
        raise UsageError(
            f"invalid kernelspec name {name!r}: use ASCII letters, digits and - . _ (not only dots)"
        )
    return name


def _destination(manager: Any, name: str, *, user: bool, prefix: str | None) -> str:
    """Where ``install_kernel_spec`` puts kernelspec ``name`` (as its own
    ``_get_destination_dir`` works it out)."""
    if user:
        return os.path.join(str(manager.user_kernel_dir), name)
    if prefix:
        return os.path.join(os.path.abspath(prefix), "share", "jupyter", "kernels", name)
    from jupyter_core.paths import SYSTEM_JUPYTER_PATH

    return os.path.join(SYSTEM_JUPYTER_PATH[0], "kernels", name)


def _ours(name: str, resource_dir: str) -> bool:
    try:
        return _info(name, resource_dir).twin_of is not None
    except UsageError:  # unreadable, or not a kernelspec at all: not ours either
        return False


def uninstall(names: list[str]) -> list[tuple[str, str]]:
    """Remove the named twins (all twins when ``names`` is empty)."""
    specs = {s.name: s for s in all_specs()}
    names = [n.lower() for n in names]  # Jupyter's kernel names are case-insensitive
    if names:
        for n in names:
            if n not in specs:
                raise UsageError(f"no kernelspec named {n!r}")
            if specs[n].twin_of is None:
                raise UsageError(
                    f"kernelspec {n!r} ({specs[n].resource_dir}) was not written by "
                    "kernel-doctor; remove it with `jupyter kernelspec remove` if you mean it"
                )
        chosen = [specs[n] for n in names]
    else:
        chosen = [s for s in specs.values() if s.twin_of is not None]
    removed = []
    for spec in chosen:
        try:
            shutil.rmtree(spec.resource_dir)
        except OSError as exc:
            raise UsageError(f"cannot remove {spec.resource_dir}: {exc.strerror or exc}") from exc
        removed.append((spec.name, spec.resource_dir))
    return removed


def check(spec: SpecInfo) -> str:
    """One line on whether this spec's supervision and agent work, found by trying."""
    if not spec.supervised:
        return "not supervised"
    argv = list(spec.argv)
    at = supervisor_at(argv)
    # jupyter_client runs a bare "python" in argv[0] as its own interpreter.
    supervisor_python = sys.executable if argv[at] in BARE_PYTHON else argv[at]
    if shutil.which(supervisor_python) is None:
        if at:
            return f"{supervisor_python} is not there any more: starts plain, with a warning"
        return f"cannot start: {supervisor_python} is not there any more"
    # As the bootstrap imports it: not from the working directory.
    if not _runs(supervisor_python, DROP_CWD + "import kernel_doctor.supervise"):
        return f"kernel-doctor missing in {supervisor_python}: starts plain, with a warning"
    kernel = argv[argv.index("--") + 1 :] if "--" in argv else []
    if kernel and shutil.which(kernel[0]) is None:
        return f"cannot start: the kernel's command {kernel[0]} is not there any more"
    if not any("ipykernel" in part for part in kernel[:4]):
        return "supervised (no agent: not an IPython kernel)"
    if not _runs(kernel[0], "import IPython, ipykernel"):
        return "supervised; the agent cannot load (no IPython in the kernel's Python)"
    return "supervised, agent loads"


def _runs(python: str, code: str) -> bool:
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
