"""What a Jupyter Server started here would do with kernel-doctor, read from its config
files as the server reads them: whether the extension is enabled, which kernel
provisioner kernels get by default, and whether that provisioner supervises every
kernel (``c.SupervisingProvisioner.supervise = True``, the admin's one line).
``kernel-doctor status`` prints it.

The config files are loaded with traitlets' own loaders, in the server's order (each
``jupyter_config`` then each ``jupyter_server_config`` along ``jupyter --paths``'s
config path, lowest priority first; ``.py`` before ``.json`` in a folder), so a
``jupyter_server_config.py`` runs here as it does when the server starts (what it
prints goes to stderr). Not seen from here: the server's command line
(``--SupervisingProvisioner.supervise=True``) and the configs of extension apps
(``jupyter_lab_config``), which the server merges in as they load.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EXTENSION = "kernel_doctor.server"
SETTING = "c.SupervisingProvisioner.supervise = True"
LOCAL = "local-provisioner"  # jupyter_client's own default


@dataclass(frozen=True)
class Chosen:
    value: Any
    source: str | None  # the file (or variable) that set it; None: the default


@dataclass(frozen=True)
class ServerSetting:
    extension: Chosen  # bool: the server extension is enabled
    provisioner: Chosen  # str: the provisioner of kernelspecs that name none
    supervise: Chosen  # bool: SupervisingProvisioner.supervise
    registered: bool  # kernel-doctor's provisioner is installed where jupyter_client finds it
    problems: tuple[str, ...]  # config files that could not be read

    @property
    def supervises_every_kernel(self) -> bool:
        from ..provisioner import NAME

        return self.registered and self.provisioner.value == NAME and bool(self.supervise.value)

    def as_dict(self) -> dict[str, Any]:
        def chosen(c: Chosen) -> dict[str, Any]:
            return {"value": c.value, "set_in": c.source}

        return {
            "supervises_every_kernel": self.supervises_every_kernel,
            "extension_enabled": chosen(self.extension),
            "default_provisioner": chosen(self.provisioner),
            "supervise": chosen(self.supervise),
            "provisioner_installed": self.registered,
            "problems": list(self.problems),
        }

    def describe(self) -> str:
        """What a user or admin reads: one verdict line, then why, naming the file."""
        from ..provisioner import NAME

        def where(c: Chosen) -> str:
            return f" (in {c.source})" if c.source else ""

        lines = []
        if self.supervises_every_kernel:
            lines.append(
                "Jupyter Server: every kernel it starts is supervised, whatever kernelspec "
                "the user picks; kernelspecs that name a provisioner of their own keep it"
            )
            lines.append(f"    SupervisingProvisioner.supervise = True{where(self.supervise)}")
        else:
            lines.append("Jupyter Server: only the twins (…-doctor kernelspecs) are supervised")
            if not self.registered:
                lines.append(
                    "    kernel-doctor's kernel provisioner is not installed in this "
                    "environment: reinstall kernel-doctor"
                )
            elif self.provisioner.value != NAME:
                lines.append(
                    f"    the default kernel provisioner is {self.provisioner.value!r}"
                    f"{where(self.provisioner)}, not {NAME!r}"
                    + ("" if self.extension.value else "; the server extension is disabled")
                )
            else:
                lines.append(
                    f"    to supervise every kernel, add `{SETTING}` to the server's "
                    "config (jupyter_server_config.py, or the JSON "
                    '{"SupervisingProvisioner": {"supervise": true}} in '
                    "jupyter_server_config.json)"
                )
        lines.extend(f"    warning: {problem}" for problem in self.problems)
        return "\n".join(lines)


def read_setting() -> ServerSetting:
    from jupyter_core.paths import jupyter_config_path

    from ..provisioner import NAME

    paths = jupyter_config_path()
    config, sources, problems = _load(paths)
    extension = _extension(paths, config, sources)
    env = os.environ.get("JUPYTER_DEFAULT_PROVISIONER_NAME")
    chosen = config.get("KernelProvisionerFactory", {}).get("default_provisioner_name")
    if chosen is not None:  # the config wins: the variable only feeds the default
        source = sources.get(("KernelProvisionerFactory", "default_provisioner_name"))
        provisioner = Chosen(chosen, source)
    elif env:
        provisioner = Chosen(env, "JUPYTER_DEFAULT_PROVISIONER_NAME")
    else:  # the extension makes ours the default where nobody chose one
        provisioner = Chosen(NAME if extension.value else LOCAL, None)
    supervise = Chosen(
        bool(config.get("SupervisingProvisioner", {}).get("supervise", False)),
        sources.get(("SupervisingProvisioner", "supervise")),
    )
    return ServerSetting(extension, provisioner, supervise, _registered(), tuple(problems))


def _load(
    paths: list[str],
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str], list[str]]:
    """The merged config (section → key → value), which file set each key, and the
    files that could not be loaded."""
    from traitlets.config.loader import (
        ConfigFileNotFound,
        JSONFileConfigLoader,
        PyFileConfigLoader,
    )

    merged: dict[str, dict[str, Any]] = {}
    sources: dict[tuple[str, str], str] = {}
    problems: list[str] = []
    for base in ("jupyter_config", "jupyter_server_config"):
        for folder in reversed(paths):
            for loader_class, ext in ((PyFileConfigLoader, ".py"), (JSONFileConfigLoader, ".json")):
                loader = loader_class(base + ext, path=folder)
                try:
                    # What a config.py prints is not ours to print on stdout (--json).
                    with contextlib.redirect_stdout(sys.stderr):
                        loaded = loader.load_config()
                except ConfigFileNotFound:
                    continue
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # sys.exit() too: the server goes on; so do we
                    name = os.path.join(folder, base + ext)
                    problems.append(f"cannot read {name} ({type(exc).__name__}: {exc})")
                    continue
                for section, values in loaded.items():
                    if not hasattr(values, "items"):
                        continue
                    for key, value in values.items():
                        merged.setdefault(section, {})[key] = value
                        sources[(section, key)] = loader.full_filename
    return merged, sources, problems


def _extension(
    paths: list[str], config: dict[str, dict[str, Any]], sources: dict[tuple[str, str], str]
) -> Chosen:
    """Whether the server loads kernel_doctor.server: the config's
    ``ServerApp.jpserver_extensions`` first, else the ``jupyter_server_config.d`` JSON
    files (where ``pip install`` enables it), read as ``ServerApp.find_server_extensions``
    reads them."""
    listed = config.get("ServerApp", {}).get("jpserver_extensions", {})
    if hasattr(listed, "get_value"):  # c.ServerApp.jpserver_extensions.update({...})
        listed = listed.get_value({})
    if isinstance(listed, Mapping) and EXTENSION in listed:
        return Chosen(bool(listed[EXTENSION]), sources.get(("ServerApp", "jpserver_extensions")))
    try:  # the server's own reader of the switches that pip install writes
        from jupyter_server.extension.config import ExtensionConfigManager
    except ImportError:  # no jupyter_server here: no server to load it
        return Chosen(False, None)
    manager = ExtensionConfigManager(read_config_path=paths)
    enabled = manager.get_jpserver_extensions().get(EXTENSION)  # type: ignore[no-untyped-call]
    return Chosen(bool(enabled), "jupyter_server_config.d" if enabled is not None else None)


def _registered() -> bool:
    from importlib.metadata import entry_points

    from ..provisioner import NAME

    return any(ep.name == NAME for ep in entry_points(group="jupyter_client.kernel_provisioners"))
