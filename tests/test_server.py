"""A real ``jupyter server`` with a supervised kernelspec, driven as JupyterLab drives it.

The server (and so every kernel it starts) runs in a fresh 400 MB memory cgroup; the
test process never joins it. Notebook sessions are made over the REST API and cells
run over the kernel websocket in the Jupyter protocol's JSON form. A kernel that dies
is auto-restarted by the server; the next cell of the same notebook must show the
previous kernel's death once, at the top of its output, and no other notebook may.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from conftest import limited_cgroup, remove_cgroup_tree
from kernel_doctor.diagnosis.causes import CAUSES
from kernel_doctor.kernelspecs import SpecInfo, twin_spec
from kernels import unguardable_fill

pytest.importorskip("jupyter_server")
websocket = pytest.importorskip("websocket")  # websocket-client, a jupyter_server dependency

LIMIT = 400 * 1024**2
LAB_EXTENSION = Path(__file__).resolve().parent.parent / "src" / "kernel_doctor" / "labextension"
TWIN = "python3-doctor"
NOTICE_START = "kernel-doctor: the previous kernel of this notebook died"
STARTUP_TIMEOUT = 60.0
REPLY_TIMEOUT = 20.0
# The server notices a dead kernel within its restarter's poll (3 s), then restarts it.
DEATH_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_twin_kernelspec(data_dir: Path) -> None:
    """The supervised twin of ipykernel's python3 kernelspec, as ``install`` writes it."""
    from ipykernel.kernelspec import write_kernel_spec

    source = Path(write_kernel_spec(data_dir / "python3-source"))
    info = SpecInfo(
        name="python3",
        resource_dir=str(source),
        display_name="Python 3",
        argv=tuple(json.loads((source / "kernel.json").read_text())["argv"]),
        twin_of=None,
        supervised=False,
    )
    target = data_dir / "kernels" / TWIN
    shutil.copytree(source, target)
    (target / "kernel.json").write_text(json.dumps(twin_spec(info, None, TWIN)))
    shutil.rmtree(source)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    token: str
    log: Path
    data: Path  # JUPYTER_DATA_DIR: kernel-doctor's folder is in it
    root: Path  # the notebooks' directory

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=REPLY_TIMEOUT) as response:
            text = response.read()
        return json.loads(text) if text else None

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def reports(self) -> list[dict[str, Any]]:
        directory = self.data / "kernel-doctor" / "reports"
        found = sorted(directory.glob("*.json")) if directory.is_dir() else []
        return [json.loads(p.read_text()) for p in found if not p.name.startswith(".")]


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def running_server(
    tmp_path_factory: pytest.TempPathFactory, app: str = "jupyter_server", *extra: str
) -> Iterator[Server]:
    """``python -m APP`` (jupyter_server, or jupyterlab) with the supervised twin
    kernelspec, in a fresh 400 MB memory cgroup that this test process never joins."""
    cgroup = limited_cgroup(LIMIT, "the server")
    process = None
    try:
        procs = Path(cgroup, "cgroup.procs")
        root = tmp_path_factory.mktemp("server")
        dirs = {n: root / n for n in ("data", "config", "runtime", "notebooks", "ipython")}
        for path in dirs.values():
            path.mkdir()
        write_twin_kernelspec(dirs["data"])
        # This tree's lab extension, not a copy installed elsewhere: JupyterLab takes the
        # first one of a name on its path, and JUPYTER_PATH comes first.
        (dirs["data"] / "labextensions").mkdir()
        (dirs["data"] / "labextensions" / "kernel-doctor").symlink_to(LAB_EXTENSION)
        env = dict(os.environ)
        env.update(
            JUPYTER_PATH=str(dirs["data"]),
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            IPYTHONDIR=str(dirs["ipython"]),
            JUPYTER_PLATFORM_DIRS="1",
        )
        env.pop("KERNEL_DOCTOR_CGROUP_PARENT", None)
        token = secrets.token_hex(16)
        port = free_port()
        log = root / "server.log"

        def join_cgroup() -> None:  # in the server's process, before exec
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    app,
                    "--allow-root",
                    "--ip=127.0.0.1",
                    f"--port={port}",
                    "--ServerApp.port_retries=0",
                    f"--IdentityProvider.token={token}",
                    "--ServerApp.open_browser=False",
                    f"--ServerApp.root_dir={dirs['notebooks']}",
                    *extra,
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=join_cgroup,
            )
        # The server and its kernels are in the cgroup; this test process never is.
        assert str(os.getpid()) not in procs.read_text().split()
        assert str(process.pid) in procs.read_text().split()
        running = Server(process, port, token, log, dirs["data"], dirs["notebooks"])
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert process.poll() is None, f"the server exited:\n{running.log_text()}"
            try:
                running.request("GET", "/api/status")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"no server:\n{running.log_text()}"
                time.sleep(0.1)
        yield running
    finally:
        if process is not None:
            stop_server(process)
        remove_cgroup_tree(cgroup)


@pytest.fixture(scope="module")
def server(cgroup_parent: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory) as running:
        yield running


# -- a notebook, as JupyterLab talks to its kernel -------------------------------------


class Endpoint(Protocol):
    """A Jupyter server as a notebook reaches it: directly, or through a hub's proxy."""

    token: str

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any: ...

    def ws_url(self, path: str) -> str: ...


class Notebook:
    """A notebook session and its kernel's websocket; reconnects when the socket drops."""

    def __init__(self, server: Endpoint, path: str, kernel: str = TWIN) -> None:
        self.server = server
        self.path = path
        session = server.request(
            "POST",
            "/api/sessions",
            {"path": path, "name": path, "type": "notebook", "kernel": {"name": kernel}},
        )
        self.session_id = session["id"]
        self.kernel_id = session["kernel"]["id"]
        self.client_session = uuid.uuid4().hex
        self.statuses: list[str] = []  # every kernel status seen, in order
        self.ws: Any = None
        self.connect()
        self.wait_ready()

    def connect(self) -> None:
        self.close_socket()
        self.ws = websocket.create_connection(
            self.server.ws_url(
                f"/api/kernels/{self.kernel_id}/channels?session_id={self.client_session}"
            ),
            header=[f"Authorization: token {self.server.token}"],
            timeout=REPLY_TIMEOUT,
        )

    def close_socket(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close()
            self.ws = None

    def close(self) -> None:
        self.close_socket()
        with contextlib.suppress(Exception):
            self.server.request("DELETE", f"/api/sessions/{self.session_id}")

    def send(self, msg_type: str, content: dict[str, Any], **metadata: Any) -> str:
        msg_id = uuid.uuid4().hex
        message = {
            "header": {
                "msg_id": msg_id,
                "msg_type": msg_type,
                "username": "",
                "session": self.client_session,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": metadata,
            "content": content,
            "channel": "shell",
            "buffers": [],
        }
        try:
            self.ws.send(json.dumps(message))
        except (websocket.WebSocketException, OSError):
            self.connect()
            self.ws.send(json.dumps(message))
        return msg_id

    def receive(self, until: float) -> dict[str, Any] | None:
        """The next message, or None at the deadline."""
        remaining = until - time.monotonic()
        if remaining <= 0:
            return None
        self.ws.settimeout(remaining)
        try:
            text = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return None
        except (websocket.WebSocketException, OSError):
            time.sleep(0.2)  # the socket dropped: reconnect, as JupyterLab does
            with contextlib.suppress(websocket.WebSocketException, OSError):
                self.connect()
            return None
        if not isinstance(text, str) or not text:
            return None
        message: dict[str, Any] = json.loads(text)
        if message.get("msg_type") == "status":
            self.statuses.append(message["content"]["execution_state"])
        return message

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """kernel_info_request until both its reply and an IOPub message for it come back,
        reconnecting the websocket between tries, as JupyterLab does after a restart. (A
        kernel that dies within 10 s of its start is restarted on new ports; a socket
        opened before the new ports were known may get replies but no IOPub.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg_id = self.send("kernel_info_request", {})
            attempt = min(deadline, time.monotonic() + 2.0)
            replied = published = False
            while not (replied and published):
                message = self.receive(attempt)
                if message is None:
                    break
                if message["parent_header"].get("msg_id") != msg_id:
                    continue
                if message.get("msg_type") == "kernel_info_reply":
                    replied = True
                elif message.get("channel") == "iopub":
                    published = True
            else:
                return
            self.connect()
        raise AssertionError(f"{self.path}: the kernel is not ready within {timeout} s")

    def start_cell(self, code: str) -> str:
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        return self.send("execute_request", content, cellId=uuid.uuid4().hex, deletedCells=[])

    def run(self, code: str) -> list[dict[str, Any]]:
        """Run a cell to its end: its outputs (IOPub messages that are outputs), in order."""
        msg_id = self.start_cell(code)
        deadline = time.monotonic() + REPLY_TIMEOUT
        outputs: list[dict[str, Any]] = []
        reply, idle = None, False
        while reply is None or not idle:
            message = self.receive(deadline)
            assert message is not None, f"{code!r} did not finish: {outputs}, {reply}"
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "execute_reply":
                reply = message["content"]
            elif kind == "status":
                idle = message["content"]["execution_state"] == "idle"
            elif kind in ("stream", "display_data", "execute_result", "error"):
                outputs.append(message)
        assert reply["status"] == "ok", reply
        return outputs

    def run_until_death(self, code: str) -> None:
        """Run a cell that kills the kernel; return once the server has restarted it."""
        self.start_cell(code)
        deadline = time.monotonic() + DEATH_TIMEOUT
        while "restarting" not in self.statuses:
            assert "dead" not in self.statuses, "the server gave up restarting the kernel"
            assert time.monotonic() < deadline, f"no restart within {DEATH_TIMEOUT} s"
            self.receive(deadline)
        self.connect()  # JupyterLab reconnects on a restart: the kernel's ports may change
        self.wait_ready()


def notices(outputs: list[dict[str, Any]]) -> list[str]:
    return [
        text
        for m in outputs
        if m["msg_type"] == "display_data"
        and (text := m["content"]["data"].get("text/plain", "")).startswith("kernel-doctor:")
    ]


def streamed(outputs: list[dict[str, Any]]) -> str:
    return "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")


@pytest.fixture
def notebooks(server: Server) -> Iterator[Any]:
    opened: list[Notebook] = []

    def start(path: str) -> Notebook:
        notebook = Notebook(server, path)
        opened.append(notebook)
        return notebook

    try:
        yield start
    finally:
        for notebook in opened:
            notebook.close()


def assert_shown_once(notebook: Notebook) -> str:
    """The next cell's first output is the notice; the stream follows; then never again.
    (``run`` keeps only messages whose parent is that cell's execute_request.)"""
    outputs = notebook.run("print('after')")
    assert outputs, "the cell after the death showed nothing"
    first = outputs[0]
    assert first["msg_type"] == "display_data", outputs
    text = first["content"]["data"]["text/plain"]
    assert text.startswith(NOTICE_START), text
    # Its own line: the cell's output never runs on after "…in a terminal."
    assert text.endswith(" in a terminal.\n"), text
    assert [m["msg_type"] for m in outputs[1:]] == ["stream"], outputs
    assert streamed(outputs) == "after\n"
    again = notebook.run("print('again')")
    assert notices(again) == [], again
    assert streamed(again) == "again\n"
    return str(text)


# -- deaths under a real server ----------------------------------------------------------


def test_oom_death_is_shown_once_in_the_next_cell_of_that_notebook_only(
    server: Server, notebooks: Any
) -> None:
    nb1 = notebooks("nb1.ipynb")
    nb2 = notebooks("nb2.ipynb")  # another notebook, started before the death
    assert streamed(nb1.run("x = 1\nprint(x)")) == "1\n"
    kernel = server.request("GET", f"/api/kernels/{nb1.kernel_id}")
    assert kernel["name"] == TWIN

    nb1.run_until_death(unguardable_fill(600))
    # The server restarted the same kernel (same id), and it works afresh.
    assert server.request("GET", f"/api/kernels/{nb1.kernel_id}")["id"] == nb1.kernel_id

    text = assert_shown_once(nb1)
    assert "Out of memory at In [2], line 1" in text, text
    assert "Its variables are gone" in text
    assert "Memory: peak" in text and "of 400 MiB" in text, text
    # The variables really are gone: a new kernel.
    outputs = nb1.run("print('x' in dir())")
    assert streamed(outputs) == "False\n"

    # The OOM killer took the kernel, not the server.
    assert server.process.poll() is None

    # The other notebook's kernel lived on (its socket never heard of a restart), and
    # its first cell since the death, the one that would show a notice, shows none.
    outputs = nb2.run("print('nb2')")
    assert notices(outputs) == [], outputs
    assert streamed(outputs) == "nb2\n"
    assert "restarting" not in nb2.statuses, nb2.statuses

    # Restarted by hand (JupyterLab's "Restart Kernel") within the 120 s window: the
    # new kernel's supervisor finds the same report of the same notebook, already shown.
    server.request("POST", f"/api/kernels/{nb1.kernel_id}/restart")
    nb1.connect()
    nb1.wait_ready()
    outputs = nb1.run("print('by hand')")
    assert notices(outputs) == [], outputs
    assert streamed(outputs) == "by hand\n"

    reports = [r for r in server.reports() if r["cause"] == "out_of_memory"]
    assert len(reports) == 1, [r["summary"] for r in server.reports()]
    assert len(server.reports()) == 1  # the restart by hand was no death
    # jupyter_server names the session by the notebook's absolute path.
    assert reports[0]["kernel"]["session_name"] == str(server.root / "nb1.ipynb")
    assert f"kernel-{nb1.kernel_id}.json" in reports[0]["kernel"]["connection_file"]
    # The supervisor's diagnosis went to its stderr, which is the server's log.
    log = server.log_text()
    assert "kernel-doctor: Out of memory at In [2], line 1" in log, log[-3000:]
    assert f"kernel-doctor show {reports[0]['id']}" in log
    print(text)  # for the record, with -s


def test_segfault_is_shown_as_a_native_crash_in_the_next_cell(
    server: Server, notebooks: Any
) -> None:
    nb = notebooks("crash.ipynb")
    nb.run("x = 1")
    nb.run_until_death("import ctypes\nctypes.string_at(0)")
    text = assert_shown_once(nb)
    assert "Native crash (SIGSEGV) at In [2], line 2" in text, text
    assert "Out of memory" not in text
    crashes = [r for r in server.reports() if r["cause"] == "native_crash"]
    assert len(crashes) == 1, [r["summary"] for r in server.reports()]
    assert crashes[0]["signal"] == "SIGSEGV"
    assert crashes[0]["kernel"]["session_name"] == str(server.root / "crash.ipynb")
    log = server.log_text()
    assert "kernel-doctor: Native crash (SIGSEGV) at In [2], line 2" in log, log[-3000:]


def test_the_kernel_model_says_why_the_kernel_died(server: Server, notebooks: Any) -> None:
    # Clients that never load the lab extension (VS Code attached to this server, a
    # script) read GET /api/kernels/<id>: its reason names the cause, cell and report.
    nb = notebooks("exit.ipynb")
    assert "reason" not in server.request("GET", f"/api/kernels/{nb.kernel_id}")
    nb.run_until_death("import os\nos._exit(3)")
    deadline = time.monotonic() + 15
    while True:
        model = server.request("GET", f"/api/kernels/{nb.kernel_id}")
        if model.get("reason") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    [report] = [r for r in server.reports() if r["cause"] == "exit"]
    assert model.get("reason") == (
        "kernel-doctor: The kernel exited by itself with code 3 at In [1], line 2. "
        f"Full report: kernel-doctor show {report['id']}"
    ), model
    # The sessions API, which frontends list kernels through, carries it too.
    [session] = [s for s in server.request("GET", "/api/sessions") if s["id"] == nb.session_id]
    assert session["kernel"]["reason"] == model["reason"]


# -- the server extension, in the same real server -----------------------------------


def test_deaths_are_counted_on_the_servers_metrics(server: Server) -> None:
    # The module's earlier tests killed kernels (an OOM kill, a segfault); the extension
    # counts each stored report under its cause within its 5 s poll.
    assert len(server.reports()) >= 2, "run with the module's earlier tests"
    expected = {cause: sum(1 for r in server.reports() if r["cause"] == cause) for cause in CAUSES}
    lines: list[str] = []
    deadline = time.monotonic() + 15
    text = ""
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/metrics",
            headers={"Authorization": f"token {server.token}"},
        )
        with urllib.request.urlopen(req, timeout=REPLY_TIMEOUT) as response:
            text = response.read().decode()
        # Every cause is there, at 0 until a death: increase() counts the first one.
        lines = [
            f'kernel_doctor_deaths_total{{cause="{c}"}} {float(n)}' for c, n in expected.items()
        ]
        if all(line in text.splitlines() for line in lines):
            break
        time.sleep(0.5)
    for line in lines:
        assert line in text.splitlines(), text
    assert "kernel_doctor_supervised_kernels" in text
    # Behind the server's normal authentication.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=REPLY_TIMEOUT)
    refused.value.close()
    assert refused.value.code in (401, 403)


def test_the_extensions_report_list_matches_the_stored_reports(server: Server) -> None:
    listed = server.request("GET", "/kernel-doctor/api/reports")
    assert {r["id"] for r in listed} == {r["id"] for r in server.reports()}
    one = server.request("GET", f"/kernel-doctor/api/reports/{listed[0]['id']}")
    assert one["summary"] == listed[0]["summary"] and "evidence" in one
