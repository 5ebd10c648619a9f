"""The server extension's REST handlers, in pytest-jupyter's in-process server: reports
(only those this user may read), live supervised kernels, a look inside one, and
Jupyter's authentication in front of all of them."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pytest_jupyter")
pytest_plugins = ["pytest_jupyter.jupyter_server"]

from test_server import TWIN, write_twin_kernelspec  # noqa: E402

REPORT = {
    "kernel_doctor": 1,
    "id": "20261125-120000-4242",
    "created": 1795600000.0,
    "outcome": "kernel_died",
    "cause": "out_of_memory",
    "summary": "Out of memory at In [3], line 3: the kernel grew to 1.0 GiB.",
    "cell": {"index": 2, "execution_count": 3, "id": None, "source": "x"},
    "line": 3,
    "memory": {"peak_bytes": 1, "limit_bytes": 2, "limit_source": "cgroup v1"},
    "evidence": ["the kernel (pid 4242) was ended by SIGKILL"],
    "kernel": {"pid": 4242, "session_name": "a.ipynb"},
}


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"kernel_doctor.server": True}}}


@pytest.fixture
def reports(jp_data_dir: Path) -> Path:
    directory = Path(os.environ["JUPYTER_DATA_DIR"]) / "kernel-doctor" / "reports"
    directory.mkdir(parents=True, exist_ok=True)
    mine = directory / f"{REPORT['id']}.json"
    mine.write_text(json.dumps(REPORT))
    mine.chmod(0o600)
    other = {**REPORT, "id": "20261125-120001-4343", "summary": "someone else's"}
    theirs = directory / f"{other['id']}.json"
    theirs.write_text(json.dumps(other))
    theirs.chmod(0o600)
    os.chown(theirs, 65534, 65534)  # another user's file: never served
    return directory


async def fetch_json(jp_fetch: Any, *parts: str) -> Any:
    response = await jp_fetch("kernel-doctor", "api", *parts)
    assert response.code == 200
    return json.loads(response.body)


async def test_reports_are_listed_and_served_only_if_readable(jp_fetch: Any, reports: Path) -> None:
    listed = await fetch_json(jp_fetch, "reports")
    assert [r["id"] for r in listed] == [REPORT["id"]]
    assert listed[0]["summary"] == REPORT["summary"] and listed[0]["cause"] == "out_of_memory"
    assert listed[0]["memory"]["limit_source"] == "cgroup v1"
    one = await fetch_json(jp_fetch, "reports", str(REPORT["id"]))
    assert one == REPORT
    from tornado.httpclient import HTTPClientError

    for missing in ("20261125-120001-4343", "20990101-000000-1"):
        with pytest.raises(HTTPClientError) as error:
            await jp_fetch("kernel-doctor", "api", "reports", missing)
        assert error.value.code == 404


async def test_an_unauthenticated_request_is_refused(
    jp_fetch: Any, jp_http_port: int, jp_base_url: str, reports: Path
) -> None:
    from tornado.httpclient import AsyncHTTPClient

    for path in ("reports", f"reports/{REPORT['id']}", "kernels"):
        url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}kernel-doctor/api/{path}"
        response = await AsyncHTTPClient().fetch(url, raise_error=False)
        assert response.code == 403, (path, response.code)
        assert str(REPORT["summary"]).encode() not in (response.body or b"")


async def test_live_state_and_a_look_inside_a_supervised_kernel(
    jp_fetch: Any, jp_data_dir: Path
) -> None:
    write_twin_kernelspec(jp_data_dir)
    response = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": TWIN}))
    kernel_id = json.loads(response.body)["id"]
    try:
        deadline = time.monotonic() + 60
        states: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not states:
            states = await fetch_json(jp_fetch, "kernels")
            time.sleep(0.2)
        assert [s["kernel_id"] for s in states] == [kernel_id]
        state = states[0]
        assert state["busy"] is False and state["memory"]["limit_bytes"] > 0
        assert state["guard"]["enabled"] is True
        # No cell running: none named, no line, no time.
        running = {k: state[k] for k in ("line", "execution_count", "cell_id", "elapsed")}
        assert running == {"line": None, "execution_count": None, "cell_id": None, "elapsed": None}
        look = await fetch_json(jp_fetch, "kernels", kernel_id, "where")
        assert look["busy"] is False and look["summary"] == "idle: no cell is running"
        assert look["os_threads"][0]["tid"] == state["pid"]
    finally:
        await jp_fetch("api", "kernels", kernel_id, method="DELETE")


def test_the_extension_fails_open() -> None:
    from kernel_doctor.server import _load_jupyter_server_extension

    warnings: list[str] = []

    class Log:
        def warning(self, text: str, *args: Any) -> None:
            warnings.append(text % args)

        def info(self, text: str, *args: Any) -> None:
            raise AssertionError("loaded without a web app")

    class BrokenServer:
        log = Log()  # and no web_app, no kernel_manager

    _load_jupyter_server_extension(BrokenServer())  # must not raise into the server
    assert len(warnings) == 1 and warnings[0].startswith("kernel-doctor: server extension not")


@pytest.fixture
def provisioner_registered() -> Iterator[None]:
    """kernel-doctor's provisioner in jupyter_client's factory before the server starts,
    as its entry point puts it there where this tree is installed."""
    from importlib.metadata import EntryPoint

    from jupyter_client.provisioning.factory import KernelProvisionerFactory

    from kernel_doctor.provisioner import NAME, SupervisingProvisioner

    KernelProvisionerFactory.clear_instance()
    factory = KernelProvisionerFactory.instance()
    target = f"{SupervisingProvisioner.__module__}:{SupervisingProvisioner.__name__}"
    factory.provisioners.setdefault(
        NAME, EntryPoint(name=NAME, value=target, group="jupyter_client.kernel_provisioners")
    )
    yield
    KernelProvisionerFactory.clear_instance()


async def test_a_twin_whose_kernel_is_missing_is_an_error_starting_it(
    provisioner_registered: None, jp_fetch: Any, jp_data_dir: Path
) -> None:
    """What JupyterLab shows as "Error Starting Kernel", as for the plain kernelspec."""
    from tornado.httpclient import HTTPClientError

    from kernel_doctor import kernelspecs

    bad = jp_data_dir / "kernels" / "bad"
    bad.mkdir(parents=True)
    bad.joinpath("kernel.json").write_text(
        json.dumps({"argv": ["non_existent_executable"], "display_name": "bad"})
    )
    twin = kernelspecs.twin_spec(kernelspecs.find("bad"), None, "bad-doctor")
    (jp_data_dir / "kernels" / "bad-doctor").mkdir()
    (jp_data_dir / "kernels" / "bad-doctor" / "kernel.json").write_text(json.dumps(twin))
    answers = []
    for name in ("bad", "bad-doctor"):
        with pytest.raises(HTTPClientError) as error:
            await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": name}))
        response = error.value.response
        answers.append((error.value.code, response.body if response else None))
    assert answers[0][0] == 500 and answers[1] == answers[0]
    kernels = await jp_fetch("api", "kernels")
    assert json.loads(kernels.body) == []  # nothing left restarting
