"""A supervised kernelspec whose program is missing fails to start as a plain one does.

jupyter_client 8's own ``test_bad_kernelspec`` and ``test_bad_kernelspec_pending``
(tests/test_multikernelmanager.py), run against kernel-doctor's twin of the bad
kernelspec under the provisioner that the server extension makes the default; and the
twin without it (kernel-doctor gone from the server's environment) still starting, its
supervisor ending at once with the exec error.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from jupyter_client.provisioning.factory import KernelProvisionerFactory

from kernel_doctor import kernelspecs
from kernel_doctor.provisioner import (
    NAME,
    SupervisingProvisioner,
    kernel_behind_supervisor,
    missing_program,
    use_by_default,
)
from test_server import TWIN, write_twin_kernelspec

BAD = "bad"
GROUP = "jupyter_client.kernel_provisioners"
TARGET = f"{SupervisingProvisioner.__module__}:{SupervisingProvisioner.__name__}"
START_TIMEOUT = 60.0


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Jupyter data dir of the test's own, with jupyter_client's bad kernelspec and
    kernel-doctor's twin of it."""
    data = tmp_path / "data"
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_PATH", "")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    spec = data / "kernels" / BAD
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": ["non_existent_executable"], "display_name": "bad"})
    )
    kernelspecs.install([BAD], user=True, prefix=None, name=None, display_name=None)
    return data


@pytest.fixture
def factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[KernelProvisionerFactory]:
    """jupyter_client's provisioner factory, cleared after the test. The entry point is
    added where this tree's kernel-doctor was installed before it declared one."""
    monkeypatch.delenv(KernelProvisionerFactory.default_provisioner_name_env, raising=False)
    KernelProvisionerFactory.clear_instance()
    found = KernelProvisionerFactory.instance()
    if NAME not in found.provisioners:
        found.provisioners[NAME] = EntryPoint(name=NAME, value=TARGET, group=GROUP)
    yield found
    KernelProvisionerFactory.clear_instance()


@pytest.fixture
def supervising(factory: KernelProvisionerFactory, data_dir: Path) -> KernelProvisionerFactory:
    """As the server extension leaves it: ours is the default provisioner."""
    assert use_by_default(factory, {})
    return factory


def test_bad_kernelspec(supervising: KernelProvisionerFactory) -> None:
    async def run() -> None:
        km = AsyncMultiKernelManager()
        with pytest.raises(FileNotFoundError) as raised:
            await km.start_kernel(kernel_name=f"{BAD}-doctor", stdout=PIPE, stderr=PIPE)
        assert raised.value.filename == "non_existent_executable"
        assert str(raised.value) == (
            "[Errno 2] No such file or directory: 'non_existent_executable'"
        )
        assert km.list_kernel_ids() == []
        km.context.destroy(linger=0)

    asyncio.run(run())


def test_bad_kernelspec_pending(supervising: KernelProvisionerFactory) -> None:
    async def run() -> None:
        km = AsyncMultiKernelManager(use_pending_kernels=True)
        kernel_id = await km.start_kernel(kernel_name=f"{BAD}-doctor", stdout=PIPE, stderr=PIPE)
        ready = km.get_kernel(kernel_id).ready
        assert isinstance(ready, asyncio.Future)
        with pytest.raises(FileNotFoundError):
            await ready
        assert kernel_id in km.list_kernel_ids()
        await km.shutdown_kernel(kernel_id)
        assert kernel_id not in km.list_kernel_ids()
        km.context.destroy(linger=0)

    asyncio.run(run())


def test_without_the_provisioner_the_twin_starts_and_its_supervisor_ends_at_once(
    factory: KernelProvisionerFactory, data_dir: Path
) -> None:
    """kernel-doctor gone from the server's environment (or a client that never loads
    the extension): the twin still starts, as it promises, and its supervisor ends with
    the exec error, which jupyter_client sees as a kernel that died while starting."""
    assert factory.default_provisioner_name == "local-provisioner"

    async def run() -> None:
        km = AsyncKernelManager(kernel_name=f"{BAD}-doctor")
        await km.start_kernel(stdout=PIPE, stderr=PIPE)
        try:
            process: Any = km.provisioner.process  # type: ignore[union-attr]
            assert process.wait(timeout=START_TIMEOUT) == 127
            assert process.stderr.read().decode().strip().splitlines()[-1] == (
                "kernel-doctor: cannot start the kernel: "
                "[Errno 2] No such file or directory: 'non_existent_executable'"
            )
        finally:
            await km.shutdown_kernel(now=True)

    asyncio.run(run())


async def _kernel_info(km: AsyncKernelManager) -> None:
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=START_TIMEOUT)
    finally:
        client.stop_channels()


def test_a_healthy_twin_starts_under_the_provisioner(
    supervising: KernelProvisionerFactory, data_dir: Path
) -> None:
    write_twin_kernelspec(data_dir)

    async def run() -> None:
        km = AsyncKernelManager(kernel_name=TWIN)
        await km.start_kernel()
        try:
            assert isinstance(km.provisioner, SupervisingProvisioner)
            await _kernel_info(km)
        finally:
            await km.shutdown_kernel(now=True)

    asyncio.run(run())


def test_supervise_puts_the_supervisor_in_front_of_any_kernelspec(
    factory: KernelProvisionerFactory, data_dir: Path
) -> None:
    spec = data_dir / "kernels" / "plain"
    spec.mkdir()
    spec.joinpath("kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "plain",
                "metadata": {
                    "kernel_provisioner": {"provisioner_name": NAME, "config": {"supervise": True}}
                },
            }
        )
    )

    async def run() -> None:
        km = AsyncKernelManager(kernel_name="plain")
        await km.start_kernel()
        try:
            process: Any = km.provisioner.process  # type: ignore[union-attr]
            assert process.args[:3] == [sys.executable, "-m", "kernel_doctor.supervise"]
            assert process.args[3:6] == ["--kernel-name", "plain", "--"]
            await _kernel_info(km)
        finally:
            await km.shutdown_kernel(now=True)

    asyncio.run(run())


def test_the_kernel_behind_a_twin_or_the_supervisor_command(tmp_path: Path) -> None:
    tmp_path.joinpath("kernel.json").write_text(json.dumps({"argv": ["x"]}))
    source = kernelspecs.SpecInfo("k", str(tmp_path), "K", ("x",), None, False)
    twin = kernelspecs.twin_spec(source, None, "k-doctor")
    assert twin["argv"][0] == kernelspecs.SHELL
    assert kernel_behind_supervisor(twin["argv"]) == ["x"]
    command = [sys.executable, "-m", "kernel_doctor.supervise", "--quiet", "--", "k", "-f", "c"]
    assert kernel_behind_supervisor(command) == ["k", "-f", "c"]
    assert kernel_behind_supervisor(["k", "--", "x"]) is None
    assert kernel_behind_supervisor([sys.executable, "-m", "kernel_doctor.supervise"]) is None


def test_missing_program_says_what_popen_would(tmp_path: Path) -> None:
    assert missing_program(["sh"], {"PATH": os.defpath}, None) is None
    gone = missing_program(["no-such-kernel"], {"PATH": str(tmp_path)}, None)
    assert isinstance(gone, FileNotFoundError) and gone.filename == "no-such-kernel"
    script = tmp_path / "kernel"
    script.write_text("#!/bin/sh\n")
    refused = missing_program(["./kernel"], {}, str(tmp_path))
    assert isinstance(refused, PermissionError) and refused.filename == "./kernel"
    script.chmod(0o755)
    assert missing_program(["./kernel"], {}, str(tmp_path)) is None
    assert missing_program([str(script)], {}, None) is None


def test_the_default_is_taken_only_when_nobody_chose_one(
    factory: KernelProvisionerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = KernelProvisionerFactory.default_provisioner_name_env
    monkeypatch.setenv(env, "someone-elses")
    assert not use_by_default(factory, {})
    monkeypatch.delenv(env)
    chosen = {"KernelProvisionerFactory": {"default_provisioner_name": "local-provisioner"}}
    assert not use_by_default(factory, chosen)
    assert factory.default_provisioner_name == "local-provisioner"
    assert use_by_default(factory, {})
    assert factory.default_provisioner_name == NAME
    del factory.provisioners[NAME]
    factory.default_provisioner_name = "local-provisioner"
    assert not use_by_default(factory, {})  # not registered: nothing to make the default


def test_the_entry_point_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    assert project["entry-points"][GROUP] == {NAME: TARGET}


def _plain_spec(data_dir: Path, name: str, **metadata: Any) -> None:
    spec = data_dir / "kernels" / name
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    document: dict[str, Any] = {"argv": argv, "display_name": name}
    if metadata:
        document["metadata"] = metadata
    spec.joinpath("kernel.json").write_text(json.dumps(document))


async def _launched(config: Any, name: str) -> list[str]:
    """The command line a kernel manager with the server's ``config`` launched for the
    kernelspec ``name`` (once the kernel answered)."""
    km = AsyncKernelManager(kernel_name=name, config=config)
    await km.start_kernel()
    try:
        await _kernel_info(km)
        process: Any = km.provisioner.process  # type: ignore[union-attr]
        return list(process.args)
    finally:
        await km.shutdown_kernel(now=True)


def test_the_admins_line_supervises_every_kernelspec_but_those_naming_their_own(
    supervising: KernelProvisionerFactory, data_dir: Path
) -> None:
    """``c.SupervisingProvisioner.supervise = True`` in the server's config, as the
    server's kernel managers pass it on: a plain kernelspec runs under the supervisor; one
    that names a provisioner of its own keeps it, unsupervised."""
    from traitlets.config import Config

    config = Config({"SupervisingProvisioner": {"supervise": True}})
    _plain_spec(data_dir, "plain")
    _plain_spec(data_dir, "own", kernel_provisioner={"provisioner_name": "local-provisioner"})

    argv = asyncio.run(_launched(config, "plain"))
    assert argv[:6] == [
        sys.executable,
        "-m",
        "kernel_doctor.supervise",
        "--kernel-name",
        "plain",
        "--",
    ]
    assert asyncio.run(_launched(config, "own"))[:3] == [
        sys.executable,
        "-m",
        "ipykernel_launcher",
    ]


def test_a_kernel_that_cannot_be_supervised_starts_plain(
    supervising: KernelProvisionerFactory,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from traitlets.config import Config

    import kernel_doctor.launch

    def broken(options: Any = None) -> list[str]:
        raise OSError("no supervisor here")

    monkeypatch.setattr(kernel_doctor.launch, "supervisor_command", broken)
    _plain_spec(data_dir, "plain")

    config = Config({"SupervisingProvisioner": {"supervise": True}})
    with caplog.at_level("WARNING"):
        argv = asyncio.run(_launched(config, "plain"))
    assert argv[:3] == [sys.executable, "-m", "ipykernel_launcher"]
    assert "kernel-doctor: starting the kernel unsupervised (no supervisor here)" in caplog.text
