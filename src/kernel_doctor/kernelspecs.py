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


def _manager() -> Any:
    from jupyter_client.kernelspec import KernelSpecManager

    return KernelSpecManager()


def _load(resource_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(resource_dir, "kernel.json"), encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the kernelspec in {resource_dir}: {exc}") from exc
    if not isinstance(value, dict) or not isinstance(value.get("argv"), list):
        raise UsageError(f"the kernelspec in {resource_dir} has no argv list")
    return value


def _info(name: str, resource_dir: str) -> SpecInfo:
    spec = _load(resource_dir)
    mark = (spec.get("metadata") or {}).get(MARK)
    argv = tuple(str(a) for a in spec["argv"])
    runs_supervisor = any("kernel_doctor" in part for part in argv[:4])
    return SpecInfo(
        name=name,
        resource_dir=resource_dir,
        display_name=str(spec.get("display_name") or name),
        argv=argv,
        twin_of=str(mark.get("source")) if isinstance(mark, dict) else None,
        supervised=isinstance(mark, dict) or runs_supervisor,
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
    spec["argv"] = [
        sys.executable,
        "-c",
        BOOT,
        "--kernel-name",
        kernel_name,
        "--",
        *argv,
    ]
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
    done = []
    for info in infos:
        target = name or f"{info.name}{SUFFIX}"
        if target in existing:
            other = _info(target, existing[target])
            if other.twin_of is None:
                raise UsageError(
                    f"a kernelspec named {target!r} already exists at {existing[target]} "
                    "and was not written by kernel-doctor; pick another --name"
                )
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


def uninstall(names: list[str]) -> list[tuple[str, str]]:
    """Remove the named twins (all twins when ``names`` is empty)."""
    specs = {s.name: s for s in all_specs()}
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
    supervisor_python = argv[0]
    if not _runs(supervisor_python, "import kernel_doctor.supervise"):
        return f"kernel-doctor missing in {supervisor_python}: starts plain, with a warning"
    kernel = argv[argv.index("--") + 1 :] if "--" in argv else []
    if not any("ipykernel" in part for part in kernel[:4]):
        return "supervised (no agent: not an IPython kernel)"
    if not kernel or not _runs(kernel[0], "import IPython, ipykernel"):
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
