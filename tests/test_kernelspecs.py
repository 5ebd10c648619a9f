"""Supervised twins of kernelspecs: ``install``, ``uninstall`` and ``status``.

Every test runs with its own Jupyter dirs (data, path, config, runtime) under
``tmp_path``; nothing is written anywhere else. The system's python3 kernelspec
stays visible, as a source only. The twins are started for real through
``jupyter_client``: one of python3, one of a kernel from another environment whose
Python cannot import kernel-doctor (a venv that hides it), and one whose
supervisor's Python lost kernel-doctor since it was installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

import kernel_doctor
from kernel_doctor import kernelspecs
from kernel_doctor.commands import main
from kernels import Kernel, alive, assert_works, describe, execute, expression, wait_gone

PREFIX = "kernel-doctor: error: "
TWIN = "python3-doctor"
UNSUPERVISED = re.compile(
    r"^kernel-doctor: cannot load the supervisor \(.+\); starting the kernel unsupervised$"
)
# Hides kernel-doctor from a Python, as if its environment had never installed it
# (kernel-doctor is installed editable through a .pth in the system site-packages,
# which a --system-site-packages venv sees too).
HIDE_KERNEL_DOCTOR = '''\
import sys


class _NoKernelDoctor:
    """This environment has no kernel-doctor."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "kernel_doctor" or name.startswith("kernel_doctor."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoKernelDoctor())
'''
# What a cell reports about the kernel it runs in.
PROBE = """\
import os as _kd_os, sys as _kd_sys
try:
    import kernel_doctor as _kd_pkg
    _kd_has = True
except ImportError:
    _kd_has = False
_kd_agent = getattr(_kd_sys.modules.get("kernel_doctor_agent"), "_agent", None) is not None
"""
PROBED = {
    "prefix": "_kd_sys.prefix",
    "agent": "_kd_agent",
    "importable": "_kd_has",
    "env": "_kd_os.environ.get('KD_TWIN_ENV')",
}


# -- fixtures --------------------------------------------------------------------------


@dataclass
class Dirs:
    root: Path
    data: Path  # JUPYTER_DATA_DIR: --user installs go to data/kernels
    path: Path  # JUPYTER_PATH: plain kernelspecs the tests write go to path/kernels

    @property
    def user_kernels(self) -> Path:
        return self.data / "kernels"

    @property
    def path_kernels(self) -> Path:
        return self.path / "kernels"


@pytest.fixture
def jupyter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dirs:
    """Private Jupyter dirs; skips where a kernelspec outside them is supervised or
    named like a twin, which the tests would see (and a bare uninstall would remove)."""
    dirs = Dirs(tmp_path, tmp_path / "data", tmp_path / "path")
    for name in ("data", "path", "config", "runtime"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(dirs.data))
    monkeypatch.setenv("JUPYTER_PATH", str(dirs.path))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("JUPYTER_PREFER_ENV_PATH", raising=False)
    monkeypatch.delenv("KERNEL_DOCTOR_DISABLE", raising=False)
    monkeypatch.delenv("KERNEL_DOCTOR_AGENT", raising=False)
    for spec in kernelspecs.all_specs():
        if Path(spec.resource_dir).is_relative_to(tmp_path):
            continue
        if spec.supervised or spec.name.endswith(kernelspecs.SUFFIX):
            pytest.skip(f"kernelspec {spec.name!r} at {spec.resource_dir} is in the way")
    return dirs


@pytest.fixture(scope="module")
def foreign_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv Python that has ipykernel (the system site-packages) but no kernel-doctor."""
    venv = tmp_path_factory.mktemp("foreign") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
        check=True,
        capture_output=True,
    )
    python = str(venv / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(site).is_relative_to(venv), site
    Path(site, "sitecustomize.py").write_text(HIDE_KERNEL_DOCTOR)
    if _imports(python, "import kernel_doctor"):
        pytest.skip("cannot hide kernel-doctor from a venv's Python here")
    if not _imports(python, "import ipykernel, IPython"):
        pytest.skip("a --system-site-packages venv cannot import ipykernel here")
    return python


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A venv Python with neither kernel-doctor nor IPython."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True
    )
    python = str(venv / "bin" / "python")
    if _imports(python, "import IPython") or _imports(python, "import kernel_doctor"):
        pytest.skip("a venv without system site-packages still imports IPython or kernel-doctor")
    return python


def _imports(python: str, code: str) -> bool:
    done = subprocess.run([python, "-c", code], capture_output=True, stdin=subprocess.DEVNULL)
    return done.returncode == 0


# -- helpers ---------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli(capsys: Any, *argv: str) -> Result:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return Result(code, out, err)


def refused(capsys: Any, *argv: str) -> str:
    """Runs the CLI expecting a refusal: exit 2, nothing on stdout, one line on stderr."""
    result = cli(capsys, *argv)
    assert result.code == 2, result
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0][len(PREFIX) :]


def snapshot(directory: Path) -> dict[str, str]:
    """Every file and directory under ``directory`` by relative path, with a file's
    SHA-256."""
    return {
        str(p.relative_to(directory)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        )
        for p in sorted(directory.rglob("*"))
    }


def read(spec_dir: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((spec_dir / "kernel.json").read_text())
    return value


def write_spec(kernels: Path, name: str, argv: list[str], **extra: Any) -> Path:
    spec_dir = kernels / name
    spec_dir.mkdir(parents=True)
    spec = {"argv": argv, "display_name": extra.pop("display_name", name), "language": "python"}
    spec.update(extra)
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return spec_dir


def ipykernel_argv(python: str) -> list[str]:
    return [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


def twin_argv(name: str, kernel: list[str], supervisor: str = sys.executable) -> list[str]:
    boot = [supervisor, "-c", kernelspecs.BOOT, "--kernel-name", name, "--", *kernel]
    return [kernelspecs.SHELL, "-c", kernelspecs.GUARD, *boot]


AT = 3  # the supervisor's Python in a twin's argv, after the shell guard


def source_spec(name: str) -> tuple[Path, dict[str, Any]]:
    """The resource dir and kernel.json of a source kernelspec, as Jupyter finds it."""
    resource_dir = Path(KernelSpecManager().find_kernel_specs()[name])
    return resource_dir, read(resource_dir)


def resolved(argv: list[str]) -> list[str]:
    """``argv`` with a bare "python" swapped for an interpreter, as jupyter_client does."""
    if argv[0] in kernelspecs.BARE_PYTHON:
        return [sys.executable, *argv[1:]]
    return list(argv)


# -- starting kernels ------------------------------------------------------------------


@dataclass
class Started:
    kernel: Kernel
    stderr: Path

    @property
    def kc(self) -> Any:
        assert self.kernel.kc is not None
        return self.kernel.kc

    def launched(self) -> psutil.Process:
        return psutil.Process(self.kernel.process.pid)

    def ipykernel(self) -> psutil.Process:
        """The one ipykernel process of the tree (launched as ``python -m ipykernel_…``;
        the supervisor and its sentinel run ``python -c BOOT``)."""
        found = []
        for proc in self.kernel.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.cmdline()[1:3] == ["-m", "ipykernel_launcher"]:
                    found.append(proc)
        assert len(found) == 1, describe(self.kernel.tree())
        return found[0]

    def probe(self) -> dict[str, str]:
        reply, _ = execute(self.kc, PROBE, **PROBED)
        assert reply["status"] == "ok", reply
        return {name: expression(reply, name) for name in PROBED}

    def warnings(self) -> list[str]:
        return [
            line
            for line in self.stderr.read_text(errors="replace").splitlines()
            if line.startswith("kernel-doctor")
        ]

    def shutdown(self) -> None:
        """A clean shutdown: every process of the kernel's tree ends."""
        tree = self.kernel.tree()
        assert self.kernel.kc is not None
        self.kernel.kc.stop_channels()
        self.kernel.kc = None
        self.kernel.km.shutdown_kernel(now=False)
        left = wait_gone(tree, 10.0)
        assert not left, describe(left)


@contextlib.contextmanager
def started(name: str, stderr: Path) -> Iterator[Started]:
    """Starts kernelspec ``name`` as Jupyter does (found on the Jupyter path), its
    stderr to the file ``stderr``; ends it and every process seen in its tree."""
    km = KernelManager(kernel_name=name)
    kernel = Kernel(name, km)
    try:
        with open(stderr, "wb") as err:
            km.start_kernel(stderr=err)
        kernel.tree()
        kernel.connect()
        yield Started(kernel, stderr)
    finally:
        if kernel.kc is not None:
            kernel.kc.stop_channels()
        try:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
        finally:
            for proc in alive(kernel.seen.values()):
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()


# -- 1. install ------------------------------------------------------------------------


def test_install_default_twin_of_python3(jupyter: Dirs, capsys: Any) -> None:
    source_dir, source = source_spec("python3")
    result = cli(capsys, "install", "--user")
    target = jupyter.user_kernels / TWIN
    assert (result.code, result.err) == (0, "")
    assert result.out == f"installed {TWIN} in {target}\n"

    twin = read(target)
    kernel = resolved(source["argv"])
    assert os.path.isabs(kernel[0]) and os.access(kernel[0], os.X_OK), kernel
    assert twin["argv"] == twin_argv(TWIN, kernel)
    assert twin["display_name"] == f"{source['display_name']} (kernel-doctor)"
    metadata = dict(twin["metadata"])
    assert metadata.pop("kernel_doctor") == {
        "source": "python3",
        "version": kernel_doctor.__version__,
        "python": sys.executable,
    }
    assert metadata == source.get("metadata", {})
    for key, value in source.items():
        if key not in ("argv", "display_name", "metadata"):
            assert twin[key] == value, key
    # Its resources (the logos) are copied.
    resources = {p.name for p in source_dir.iterdir() if p.is_file()} - {"kernel.json"}
    assert any(name.startswith("logo") for name in resources), resources
    for name in resources:
        assert (target / name).read_bytes() == (source_dir / name).read_bytes(), name

    info = kernelspecs.find(TWIN)
    assert (info.twin_of, info.supervised) == ("python3", True)
    assert info.resource_dir == str(target)


def test_install_keeps_env_metadata_and_resources(jupyter: Dirs, capsys: Any) -> None:
    source_dir = write_spec(
        jupyter.path_kernels,
        "custom",
        ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name="Custom Python",
        env={"KD_TWIN_ENV": "kept", "OTHER": "{resource_dir}"},
        metadata={"debugger": True, "nested": {"a": [1, 2]}},
        interrupt_mode="message",
    )
    (source_dir / "logo-64x64.png").write_bytes(b"\x89PNG fake logo")
    (source_dir / "kernel.js").write_text("// a frontend extension\n")
    result = cli(capsys, "install", "custom", "--name", "mine", "--display-name", "Mine!")
    assert (result.code, result.err) == (0, ""), result
    target = jupyter.user_kernels / "mine"
    assert result.out == f"installed mine in {target}\n"

    twin = read(target)
    assert twin["argv"] == twin_argv("mine", ipykernel_argv(sys.executable))
    assert twin["display_name"] == "Mine!"
    assert twin["env"] == {"KD_TWIN_ENV": "kept", "OTHER": "{resource_dir}"}
    assert twin["interrupt_mode"] == "message"
    assert twin["language"] == "python"
    assert twin["metadata"]["debugger"] is True
    assert twin["metadata"]["nested"] == {"a": [1, 2]}
    assert twin["metadata"]["kernel_doctor"]["source"] == "custom"
    assert (target / "logo-64x64.png").read_bytes() == b"\x89PNG fake logo"
    assert (target / "kernel.js").read_text() == "// a frontend extension\n"
    # The source is untouched.
    assert read(source_dir)["display_name"] == "Custom Python"
    assert "kernel_doctor" not in read(source_dir)["metadata"]


def test_install_prefix(jupyter: Dirs, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = jupyter.root / "env"
    result = cli(capsys, "install", "--prefix", str(prefix))
    target = prefix / "share" / "jupyter" / "kernels" / TWIN
    assert result.code == 0, result
    assert result.out == f"installed {TWIN} in {target}\n"
    assert read(target)["argv"][:5] == twin_argv(TWIN, [])[:5]
    assert not jupyter.user_kernels.exists()
    # Found once the prefix is on the Jupyter path, and removable from there.
    monkeypatch.setenv("JUPYTER_PATH", str(target.parent.parent))
    assert kernelspecs.find(TWIN).resource_dir == str(target)
    assert cli(capsys, "uninstall", TWIN).out == f"removed {TWIN} from {target}\n"
    assert not target.exists()


def test_install_sys_prefix_resolves_to_this_pythons_prefix(
    jupyter: Dirs, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never write into the real sys.prefix: point it at a temporary one. What is
    # tested is that --sys-prefix means "sys.prefix of the Python running us".
    fake = jupyter.root / "sys-prefix"
    monkeypatch.setattr(sys, "prefix", str(fake))
    result = cli(capsys, "install", "--sys-prefix")
    target = fake / "share" / "jupyter" / "kernels" / TWIN
    assert result.code == 0, result
    assert result.out == f"installed {TWIN} in {target}\n"
    assert read(target)["metadata"]["kernel_doctor"]["source"] == "python3"


def test_install_all(jupyter: Dirs, capsys: Any) -> None:
    write_spec(jupyter.path_kernels, "alpha", ipykernel_argv("python"))
    write_spec(jupyter.path_kernels, "beta", ["/bin/sh", "-c", "exit 1"])
    write_spec(jupyter.path_kernels, "hand", [sys.executable, "-m", "kernel_doctor.supervise"])
    plain = {s.name for s in kernelspecs.all_specs() if not s.supervised}
    assert {"alpha", "beta", "python3"} <= plain and "hand" not in plain
    result = cli(capsys, "install", "--all")
    assert result.code == 0, result
    installed = {line.split()[1] for line in result.out.splitlines()}
    assert installed == {f"{name}-doctor" for name in plain}
    assert read(jupyter.user_kernels / "beta-doctor")["argv"] == twin_argv(
        "beta-doctor", ["/bin/sh", "-c", "exit 1"]
    )
    # Again: the twins are replaced, and no twin of a twin appears.
    again = cli(capsys, "install", "--all")
    assert again.code == 0, again
    assert sorted(again.out.splitlines()) == sorted(result.out.splitlines())
    assert {p.name for p in jupyter.user_kernels.iterdir()} == installed


# -- 3. refusals -----------------------------------------------------------------------


def test_refuses_to_overwrite_a_foreign_kernelspec(jupyter: Dirs, capsys: Any) -> None:
    foreign = write_spec(jupyter.user_kernels, TWIN, ipykernel_argv("python"), display_name="Mine")
    (foreign / "notes.txt").write_text("keep me")
    before = snapshot(foreign)
    message = refused(capsys, "install", "--user")
    assert f"a kernelspec named {TWIN!r} already exists" in message
    assert "--name" in message
    assert snapshot(foreign) == before


@pytest.mark.parametrize("where", ["prefix-off-path", "shadowed-by-a-twin", "other-case"])
def test_refuses_to_overwrite_a_foreign_kernelspec_at_the_destination(
    jupyter: Dirs, capsys: Any, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The destination itself is checked, not only the spec Jupyter would pick."""
    prefix = jupyter.root / "env"
    prefix_kernels = prefix / "share" / "jupyter" / "kernels"
    if where == "prefix-off-path":
        # A foreign spec under a prefix that is not on the Jupyter path.
        foreign = write_spec(prefix_kernels, TWIN, ipykernel_argv("python"))
        argv = ["install", "--prefix", str(prefix)]
    elif where == "shadowed-by-a-twin":
        # Our twin on JUPYTER_PATH (searched first) hides a foreign one in the user dir.
        assert cli(capsys, "install", "--prefix", str(prefix)).code == 0
        monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        foreign = write_spec(jupyter.user_kernels, TWIN, ipykernel_argv("python"))
        assert kernelspecs.find(TWIN).resource_dir == str(prefix_kernels / TWIN)
        argv = ["install", "--user"]
    else:
        # Jupyter's kernel names are case-insensitive: --name Foreign is "foreign".
        foreign = write_spec(jupyter.user_kernels, "foreign", ipykernel_argv("python"))
        argv = ["install", "--name", "Foreign"]
    before = snapshot(foreign)
    assert "already exists" in refused(capsys, *argv)
    assert snapshot(foreign) == before


def test_reinstall_over_its_own_twin(jupyter: Dirs, capsys: Any) -> None:
    assert cli(capsys, "install", "--display-name", "First").code == 0
    target = jupyter.user_kernels / TWIN
    (target / "stale.txt").write_text("from the first install")
    result = cli(capsys, "install", "--display-name", "Second")
    assert result.code == 0, result
    assert read(target)["display_name"] == "Second"
    assert not (target / "stale.txt").exists()


def test_refuses_a_twin_of_a_twin(jupyter: Dirs, capsys: Any) -> None:
    assert cli(capsys, "install").code == 0
    before = snapshot(jupyter.user_kernels)
    message = refused(capsys, "install", TWIN, "--name", "twice")
    assert f"kernelspec {TWIN!r} is already supervised" in message
    assert "(python3)" in message
    # A hand-written supervised spec (no mark) is refused too.
    write_spec(jupyter.path_kernels, "hand", [sys.executable, "-m", "kernel_doctor.supervise"])
    assert "'hand' is already supervised" in refused(capsys, "install", "hand")
    assert snapshot(jupyter.user_kernels) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["install", "no-such-kernel"], "no kernelspec named 'no-such-kernel'"),
        (["install", "python3", "no-such-kernel"], "no kernelspec named 'no-such-kernel'"),
        (["install", "--all", "python3"], "give kernelspec names or --all, not both"),
        (["install", "python3", "custom", "--name", "x"], "--name needs exactly one"),
        (["install", "--name", "bad name"], "invalid kernelspec name 'bad name'"),
        (["install", "--name", "../escape"], "invalid kernelspec name '../escape'"),
        # install_kernel_spec replaces the directory a name gives: the kernels dir
        # itself, or the Jupyter data dir above it.
        (["install", "--name", "."], "invalid kernelspec name '.'"),
        (["install", "--name", ".."], "invalid kernelspec name '..'"),
        (["install", "--user", "--prefix", "/tmp"], "not allowed with argument"),
    ],
)
def test_install_refusals(jupyter: Dirs, capsys: Any, argv: list[str], message: str) -> None:
    write_spec(jupyter.path_kernels, "custom", ipykernel_argv("python"))
    jupyter.user_kernels.mkdir()
    write_spec(jupyter.user_kernels, "someone-elses", ipykernel_argv("python"))
    before = snapshot(jupyter.root)
    assert message in refused(capsys, *argv)
    assert snapshot(jupyter.root) == before


def test_refuses_all_when_one_target_is_foreign(jupyter: Dirs, capsys: Any) -> None:
    """Nothing is written when one of several twins would overwrite a foreign spec."""
    write_spec(jupyter.path_kernels, "alpha", ipykernel_argv("python"))
    write_spec(jupyter.path_kernels, "zeta", ipykernel_argv("python"))
    foreign = write_spec(jupyter.user_kernels, "zeta-doctor", ipykernel_argv("python"))
    before = snapshot(jupyter.user_kernels)
    assert "'zeta-doctor' already exists" in refused(capsys, "install", "alpha", "zeta")
    assert snapshot(jupyter.user_kernels) == before
    assert foreign.exists()


def test_install_when_python3_is_only_ipykernels_builtin(
    jupyter: Dirs, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jupyter offers python3 from ipykernel itself where no python3 kernelspec is
    installed as files (its resource dir then has the logos and no kernel.json)."""
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict

    kernels = str(jupyter.user_kernels)
    monkeypatch.setattr(kernelspecs, "_manager", lambda: KernelSpecManager(kernel_dirs=[kernels]))
    assert KernelSpecManager(kernel_dirs=[kernels]).find_kernel_specs() == {"python3": RESOURCES}
    result = cli(capsys, "install")
    assert result.code == 0, result
    twin = read(jupyter.user_kernels / TWIN)
    assert twin["argv"] == twin_argv(TWIN, resolved(get_kernel_dict()["argv"]))
    assert (jupyter.user_kernels / TWIN / "logo-64x64.png").exists()


# -- 4. uninstall ----------------------------------------------------------------------


def test_uninstall(jupyter: Dirs, capsys: Any) -> None:
    alpha = write_spec(jupyter.path_kernels, "alpha", ipykernel_argv("python"))
    foreign = write_spec(jupyter.user_kernels, "foreign", ipykernel_argv("python"))
    assert cli(capsys, "install", "python3", "alpha").code == 0
    twins = {name: jupyter.user_kernels / name for name in (TWIN, "alpha-doctor")}
    untouched = {p: snapshot(p) for p in (alpha, foreign)}

    # By name: only that twin goes.
    result = cli(capsys, "uninstall", "alpha-doctor")
    assert (result.code, result.err) == (0, "")
    assert result.out == f"removed alpha-doctor from {twins['alpha-doctor']}\n"
    assert not twins["alpha-doctor"].exists() and twins[TWIN].exists()

    # Never a spec it did not write, nor one that is not there.
    message = refused(capsys, "uninstall", "foreign")
    assert message.startswith(f"kernelspec 'foreign' ({foreign}) was not written by kernel-doctor")
    assert "no kernelspec named 'nope'" in refused(capsys, "uninstall", TWIN, "nope")
    assert twins[TWIN].exists()  # nothing removed when one name is refused
    assert "not written by kernel-doctor" in refused(capsys, "uninstall", TWIN, "alpha")
    assert twins[TWIN].exists()

    # Bare: every twin, and nothing else.
    assert cli(capsys, "install", "alpha").code == 0
    result = cli(capsys, "uninstall")
    assert result.code == 0, result
    assert sorted(result.out.splitlines()) == sorted(
        f"removed {name} from {path}" for name, path in twins.items()
    )
    assert not any(p.exists() for p in twins.values())
    assert {p: snapshot(p) for p in untouched} == untouched
    assert kernelspecs.find("python3").twin_of is None

    result = cli(capsys, "uninstall")
    assert (result.code, result.out) == (0, "no kernel-doctor kernelspecs installed\n")


# -- 2. a twin of python3, started for real --------------------------------------------


def test_twin_of_python3_runs_supervised(jupyter: Dirs, capsys: Any) -> None:
    assert cli(capsys, "install").code == 0
    with started(TWIN, jupyter.root / "stderr.txt") as kernel:
        assert_works(kernel.kc)
        probe = kernel.probe()
        assert probe["agent"] == "True", probe
        assert probe["prefix"] == repr(sys.prefix)
        # The supervisor (our Python running kernel-doctor) is the kernel's parent.
        supervisor, ipykernel = kernel.launched(), kernel.ipykernel()
        assert ipykernel.ppid() == supervisor.pid
        # The shell guard exec()s the supervisor: same pid, its argv from here on.
        assert supervisor.cmdline()[:5] == twin_argv(TWIN, [])[AT : AT + 5]
        assert any("kernel_doctor" in part for part in supervisor.cmdline())
        assert ipykernel.cmdline()[0] == sys.executable
        assert kernel.warnings() == []
        kernel.shutdown()


# -- 5. a kernel of another environment, without kernel-doctor -------------------------


def test_twin_of_a_kernel_without_kernel_doctor(
    jupyter: Dirs, capsys: Any, foreign_python: str
) -> None:
    venv = str(Path(foreign_python).parent.parent)
    write_spec(
        jupyter.path_kernels,
        "venv-py",
        ipykernel_argv(foreign_python),
        display_name="Venv Python",
        env={"KD_TWIN_ENV": "kept"},
    )
    result = cli(capsys, "install", "--all")
    assert result.code == 0, result
    assert "installed venv-py-doctor in " in result.out
    twin = read(jupyter.user_kernels / "venv-py-doctor")
    assert twin["argv"] == twin_argv("venv-py-doctor", ipykernel_argv(foreign_python))
    assert twin["display_name"] == "Venv Python (kernel-doctor)"
    assert twin["env"] == {"KD_TWIN_ENV": "kept"}

    with started("venv-py-doctor", jupyter.root / "stderr.txt") as kernel:
        assert_works(kernel.kc)
        probe = kernel.probe()
        # The venv's own Python, which cannot import kernel-doctor, runs the agent.
        assert probe == {
            "prefix": repr(venv),
            "agent": "True",
            "importable": "False",
            "env": "'kept'",
        }
        supervisor, ipykernel = kernel.launched(), kernel.ipykernel()
        assert ipykernel.ppid() == supervisor.pid
        assert ipykernel.cmdline()[0] == foreign_python
        assert supervisor.cmdline()[0] == sys.executable
        assert kernel.warnings() == []
        kernel.shutdown()

    result = cli(capsys, "status")
    assert result.code == 0
    assert "venv-py-doctor (twin of venv-py): supervised, agent loads\n" in result.out
    assert "venv-py: not supervised\n" in result.out


# -- 6. a twin whose kernel-doctor has gone since --------------------------------------


def test_twin_whose_kernel_doctor_was_uninstalled(
    jupyter: Dirs, capsys: Any, foreign_python: str
) -> None:
    assert cli(capsys, "install").code == 0
    target = jupyter.user_kernels / TWIN
    spec = read(target)
    spec["argv"][AT] = foreign_python  # as if kernel-doctor left the supervisor's Python
    (target / "kernel.json").write_text(json.dumps(spec))

    with started(TWIN, jupyter.root / "stderr.txt") as kernel:
        assert_works(kernel.kc)
        assert kernel.probe()["agent"] == "False"
        # The plain kernel replaced the bootstrap: no supervisor, no sentinel.
        ipykernel = kernel.ipykernel()
        assert ipykernel.pid == kernel.launched().pid
        assert [p.pid for p in kernel.kernel.tree()] == [ipykernel.pid]
        assert not any("kernel_doctor" in part for part in ipykernel.cmdline())
        warnings = kernel.warnings()
        assert len(warnings) == 1, warnings
        assert UNSUPERVISED.match(warnings[0]), warnings[0]
        assert "kernel_doctor" in warnings[0]
        # Written before the plain kernel started, so first.
        assert kernel.stderr.read_text().splitlines()[0] == warnings[0]
        kernel.shutdown()

    result = cli(capsys, "status")
    line = f"{TWIN} (twin of python3): kernel-doctor missing in {foreign_python}: starts plain"
    assert line in result.out


@pytest.mark.parametrize("shadow", [False, True])
def test_bootstrap_without_jupyter(tmp_path: Path, foreign_python: str, shadow: bool) -> None:
    """The bootstrap alone: without kernel-doctor it runs the command plain, with one
    warning; with it, a ``kernel_doctor`` in the working directory cannot shadow it."""
    if shadow:
        (tmp_path / "kernel_doctor").mkdir()
        (tmp_path / "kernel_doctor" / "__init__.py").write_text("raise ImportError('shadow')\n")
    python = sys.executable if shadow else foreign_python
    command = [sys.executable, "-c", "import os; print('ran', os.getpid())"]
    done = subprocess.run(
        twin_argv("boot", command, supervisor=python),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "runtime")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ran "), done.stdout
    warnings = [line for line in done.stderr.splitlines() if "unsupervised" in line]
    if shadow:
        assert warnings == [], done.stderr
    else:
        assert len(warnings) == 1 and UNSUPERVISED.match(warnings[0]), done.stderr
        assert done.stderr == warnings[0] + "\n"


# -- 7. status -------------------------------------------------------------------------


def test_status_of_a_mix(jupyter: Dirs, capsys: Any, foreign_python: str, bare_python: str) -> None:
    write_spec(jupyter.path_kernels, "alpha", ipykernel_argv("python"))
    write_spec(jupyter.path_kernels, "shell", ["/bin/sh", "-c", "exit 1"])
    write_spec(jupyter.path_kernels, "bare", ipykernel_argv(bare_python))
    ghost = str(jupyter.root / "no-such-kernel")
    write_spec(jupyter.path_kernels, "ghost", [ghost, "-f", "{connection_file}"])
    hand = write_spec(
        jupyter.path_kernels,
        "hand",
        [sys.executable, "-m", "kernel_doctor.supervise", "--", *ipykernel_argv("python")],
    )
    assert cli(capsys, "install", "alpha", "shell", "bare", "ghost").code == 0
    assert cli(capsys, "install", "--name", "broken").code == 0
    broken = jupyter.user_kernels / "broken"
    spec = read(broken)
    spec["argv"][AT] = foreign_python
    (broken / "kernel.json").write_text(json.dumps(spec))
    assert cli(capsys, "install", "--name", "gone").code == 0
    gone = jupyter.user_kernels / "gone"
    spec = read(gone)
    spec["argv"][AT] = str(jupyter.root / "deleted-env" / "bin" / "python")
    (gone / "kernel.json").write_text(json.dumps(spec))
    (jupyter.path_kernels / "unreadable").mkdir()
    (jupyter.path_kernels / "unreadable" / "kernel.json").write_text("{not json")

    expected = {
        "alpha": (False, None, "not supervised"),
        "alpha-doctor": (True, "alpha", "supervised, agent loads"),
        "shell-doctor": (True, "shell", "supervised (no agent: not an IPython kernel)"),
        "bare-doctor": (
            True,
            "bare",
            "supervised; the agent cannot load (no IPython in the kernel's Python)",
        ),
        "broken": (
            True,
            "python3",
            f"kernel-doctor missing in {foreign_python}: starts plain, with a warning",
        ),
        # Its whole environment was deleted (as pipx uninstall does): the shell guard
        # starts the kernel plain.
        "gone": (
            True,
            "python3",
            f"{jupyter.root}/deleted-env/bin/python is not there any more: starts plain, "
            "with a warning",
        ),
        "ghost-doctor": (
            True,
            "ghost",
            f"cannot start: the kernel's command {ghost} is not there any more",
        ),
        "hand": (True, None, "supervised, agent loads"),
    }
    where = {
        "alpha": jupyter.path_kernels / "alpha",
        "hand": hand,
        "broken": broken,
        "gone": gone,
        **{
            n: jupyter.user_kernels / n
            for n in ("alpha-doctor", "shell-doctor", "bare-doctor", "ghost-doctor")
        },
    }

    result = cli(capsys, "status")
    assert (result.code, result.err) == (0, "")
    for name, (_, twin_of, state) in expected.items():
        twin = f" (twin of {twin_of})" if twin_of else ""
        assert f"{name}{twin}: {state}\n    {where[name]}\n" in result.out
    assert "unreadable" not in result.out
    assert "none is supervised" not in result.out

    result = cli(capsys, "status", "--json")
    assert (result.code, result.err) == (0, "")
    rows = {row["name"]: row for row in json.loads(result.out)["kernelspecs"]}
    assert "unreadable" not in rows and "python3" in rows
    for name, (supervised, twin_of, state) in expected.items():
        assert rows[name] == {
            "name": name,
            "display_name": read(where[name])["display_name"],
            "supervised": supervised,
            "twin_of": twin_of,
            "resource_dir": str(where[name]),
            "provisioner": None,
            "state": state,
        }


def test_status_imports_kernel_doctor_as_the_bootstrap_does(
    jupyter: Dirs, capsys: Any, bare_python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``kernel_doctor`` in the working directory does not make status say a Python
    without kernel-doctor supervises: the bootstrap does not import from there."""
    assert cli(capsys, "install").code == 0
    spec = read(jupyter.user_kernels / TWIN)
    spec["argv"][AT] = bare_python
    (jupyter.user_kernels / TWIN / "kernel.json").write_text(json.dumps(spec))
    shadow = jupyter.root / "cwd" / "kernel_doctor"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (shadow / "supervise.py").write_text("def main(argv):\n    return 0\n")
    monkeypatch.chdir(shadow.parent)
    result = cli(capsys, "status")
    assert f"{TWIN} (twin of python3): kernel-doctor missing in {bare_python}" in result.out


def test_status_with_nothing_supervised(jupyter: Dirs, capsys: Any) -> None:
    result = cli(capsys, "status")
    assert result.code == 0
    assert "python3: not supervised\n" in result.out
    assert result.out.endswith(
        "\nnone is supervised: `kernel-doctor install` adds a twin of python3\n"
    )
    rows = json.loads(cli(capsys, "status", "--json").out)["kernelspecs"]
    assert [r for r in rows if r["supervised"]] == []


def test_shell_guard_starts_the_kernel_when_the_supervisor_python_is_gone(
    tmp_path: Path,
) -> None:
    """kernel-doctor's whole environment deleted (pipx or uv tool uninstall): the twin's
    shell guard finds no supervisor Python and starts the kernel plain, with one line."""
    gone = str(tmp_path / "deleted-env" / "bin" / "python")
    command = [sys.executable, "-c", "import os, sys; print('ran', sys.argv[1:])", "a b", "--"]
    done = subprocess.run(
        twin_argv("boot", command, supervisor=gone),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran ['a b', '--']\n"  # arguments passed on intact
    assert done.stderr == (
        f"kernel-doctor: {gone} is not there any more; starting the kernel unsupervised\n"
    )


def test_status_says_whether_the_server_supervises_every_kernel(jupyter: Dirs, capsys: Any) -> None:
    """The admin's one line (``SupervisingProvisioner.supervise``), read from the server's
    config files as the server reads them: JSON or Python, the file that set it named."""
    config = jupyter.root / "config"
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"SupervisingProvisioner": {"supervise": False}})
    )
    write_spec(jupyter.path_kernels, "alpha", ipykernel_argv("python"))
    own = {"kernel_provisioner": {"provisioner_name": "someone-elses"}}
    write_spec(jupyter.path_kernels, "remote", ipykernel_argv("python"), metadata=own)

    result = cli(capsys, "status")
    assert (result.code, result.err) == (0, "")
    assert "alpha: not supervised\n" in result.out
    assert "Jupyter Server: only the twins (…-doctor kernelspecs) are supervised\n" in result.out
    assert "add `c.SupervisingProvisioner.supervise = True` to the server's config" in result.out

    # The admin's line, in the image's jupyter_server_config.py (it runs, as in the server).
    (config / "jupyter_server_config.json").unlink()
    (config / "jupyter_server_config.py").write_text(
        "c.SupervisingProvisioner.supervise = True\nprint('a config that talks')\n"
    )
    result = cli(capsys, "status")
    assert (result.code, result.err) == (0, "a config that talks\n")
    assert (
        "alpha: supervised when a Jupyter Server starts it (the server's setting)\n"
    ) in result.out
    assert "remote: not supervised (it names the provisioner 'someone-elses')\n" in result.out
    assert (
        "Jupyter Server: every kernel it starts is supervised, whatever kernelspec the user "
        "picks; kernelspecs that name a provisioner of their own keep it\n"
        f"    SupervisingProvisioner.supervise = True (in {config}/jupyter_server_config.py)\n"
    ) in result.out
    assert "none is supervised" not in result.out
    # What the config prints goes to stderr: --json stays JSON.
    server = json.loads(cli(capsys, "status", "--json").out)["server"]
    assert server["supervises_every_kernel"] is True
    assert server["supervise"] == {
        "value": True,
        "set_in": f"{config}/jupyter_server_config.py",
    }

    # Another default provisioner, chosen by the admin: ours does not wrap anything.
    (config / "jupyter_config.json").write_text("{}")
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"KernelProvisionerFactory": {"default_provisioner_name": "local-provisioner"}})
    )
    result = cli(capsys, "status")
    assert (
        "    the default kernel provisioner is 'local-provisioner' "
        f"(in {config}/jupyter_server_config.json), not 'kernel-doctor'\n"
    ) in result.out

    # A config file that cannot run: the server logs it and starts; status says so.
    (config / "jupyter_server_config.json").unlink()
    (config / "jupyter_server_config.py").write_text("c.SupervisingProvisioner.supervise = (\n")
    result = cli(capsys, "status")
    assert result.code == 0 and "Traceback" not in result.out
    assert f"    warning: cannot read {config}/jupyter_server_config.py (" in result.out
