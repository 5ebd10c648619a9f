"""A whole JupyterHub with kernel-doctor on for everyone, and a real Prometheus.

JupyterHub (PyPI) with configurable-http-proxy (npm) and LocalProcessSpawner; two real
Unix users that this module makes and removes. Their single-user servers read the
admin's one line, ``{"SupervisingProvisioner": {"supervise": true}}``, from a
``jupyter_server_config.json`` on their config path (``JUPYTER_CONFIG_PATH``, where an
image would use ``/usr/local/etc/jupyter``), and
start notebooks on the plain ``python3`` kernelspec, through the hub's REST API and
proxy, each with a token of their own. The victim's server runs in a 400 MB memory
cgroup (the spawner puts it there, as SystemdSpawner or Kubernetes would); its kernel is
OOM-killed. Debian's Prometheus then scrapes both users' ``/metrics`` through the proxy
with a hub service's token, with README's scrape config (``deploy/prometheus``) and alert
rules, and PromQL says who lost a kernel to the OOM killer. Prometheus's graph page of
the same queries is kept as ``test-artifacts/hub/prometheus-deaths.png``.

The test's Python may live under root's 0700 home (it does on CI): then the hub runs in a
mount namespace of its own in which /root is a 0711 tmpfs holding only the bind-mounted
Python, so the users' servers can run it. The machine's /root is never changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import CHROMIUM_ARGS, limited_cgroup, remove_cgroup_tree
from kernels import unguardable_fill
from test_dashboards import dashboard_exprs, grafana_to_promql
from test_server import NOTICE_START, Notebook, assert_shown_once, free_port

pytest.importorskip("jupyterhub", reason="JupyterHub is not installed (pip install jupyterhub)")
yaml = pytest.importorskip("yaml")
CHP = shutil.which("configurable-http-proxy")
if CHP is None:
    pytest.skip(
        "configurable-http-proxy is not installed (npm install -g configurable-http-proxy)",
        allow_module_level=True,
    )
RUNUSER = shutil.which("runuser") or "runuser"
if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None:
    pytest.skip("making Unix users needs root, useradd and runuser", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "prometheus"
ARTIFACTS = REPO / "test-artifacts" / "hub"
LIMIT = 400 * 1024**2
START_TIMEOUT = 90.0
REPLY_TIMEOUT = 20.0
# The extension refreshes its metrics every 5 s; Prometheus scrapes every second here.
SCRAPE_TIMEOUT = 40.0
ADMIN_SETTING = {"SupervisingProvisioner": {"supervise": True}}

HUB_CONFIG = """\
import os
from jupyterhub.spawner import LocalProcessSpawner

c = get_config()  # noqa: F821
settings = {settings}


class CgroupSpawner(LocalProcessSpawner):
    \"\"\"Puts a user's server in that user's memory cgroup before it runs, as
    SystemdSpawner or Kubernetes enforce mem_limit.\"\"\"

    def make_preexec_fn(self, name):
        become = super().make_preexec_fn(name)
        procs = settings["cgroups"].get(name)
        if procs is None:
            return become

        def preexec():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
            become()

        return preexec


c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = settings["proxy_port"]
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = settings["hub_port"]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:%d" % settings["proxy_api_port"]
c.ConfigurableHTTPProxy.command = [settings["chp"]]
c.JupyterHub.db_url = "sqlite:///" + settings["root"] + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = settings["root"] + "/cookie_secret"
# No logins at all (the test uses API tokens): a login page on this machine would
# let any local user in as anyone while the test runs.
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.spawner_class = CgroupSpawner
c.Spawner.cmd = [settings["python"], "-m", "jupyterhub.singleuser"]
# The admin's one line, in a jupyter_server_config.json on the config path (an image's
# /usr/local/etc/jupyter; here JUPYTER_CONFIG_PATH, as the machine's own must stay).
c.Spawner.environment = {{"JUPYTER_CONFIG_PATH": settings["etc_jupyter"]}}
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
c.JupyterHub.services = [
    {{"name": "prometheus", "api_token": settings["prometheus_token"]}},
    {{"name": "test-admin", "api_token": settings["admin_token"]}},
]
c.JupyterHub.load_roles = [
    # README's role: Prometheus may read every user's server, nothing else.
    {{"name": "prometheus-scrape", "scopes": ["access:servers"], "services": ["prometheus"]}},
    {{"name": "admin", "services": ["test-admin"]}},
]
"""

# Run as: sh -c MOUNT_SCRIPT sh PYENV_ROOT MOUNTPOINT -- COMMAND…
MOUNT_SCRIPT = """\
set -e
mount --bind "$1" "$2"
mount -t tmpfs -o mode=0711 kd-hub-root /root
mkdir -p "$1"
mount --bind "$2" "$1"
shift 3
exec "$@"
"""
UNSHARE = ["unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNT_SCRIPT, "sh"]


@dataclass
class User:
    name: str
    uid: int
    token: str = ""
    notebook: Notebook | None = None


@dataclass
class Hub:
    process: subprocess.Popen[bytes]
    root: Path
    proxy_port: int
    admin_token: str
    prometheus_token: str
    log: Path
    users: dict[str, User] = field(default_factory=dict)
    killed: str | None = None  # the victim's cell that was OOM-killed ("In [N]")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def call(
        self, method: str, path: str, token: str, body: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.proxy_port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        if token:
            req.add_header("Authorization", f"token {token}")
        try:
            with urllib.request.urlopen(req, timeout=REPLY_TIMEOUT) as response:
                text = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            text, status = exc.read(), exc.code
            exc.close()
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text.decode(errors="replace")


@dataclass
class UserServer:
    """A user's single-user server through the hub's proxy, with the user's own token
    (``test_server.Endpoint``)."""

    hub: Hub
    user: User
    token: str = ""

    def __post_init__(self) -> None:
        self.token = self.user.token

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        status, answer = self.hub.call(method, f"/user/{self.user.name}{path}", self.token, body)
        assert status < 400, f"{method} {path}: {status} {answer}"
        return answer

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.hub.proxy_port}/user/{self.user.name}{path}"


def _make_user(name: str) -> int:
    made = subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", name], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot make a user: {made.stderr.strip()}")
    return pwd.getpwnam(name).pw_uid


def _remove_user(name: str, uid: int) -> None:
    """End what the hub left running as ``uid`` (a user this module made: all of its
    processes are this test's), then remove the user and its home."""
    for _ in range(20):
        left = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if not left:
            break
        time.sleep(0.2)
    subprocess.run(["userdel", "--remove", name], capture_output=True, text=True)


def _users_can_run(uid: int, prefix: list[str]) -> bool:
    """The user (with its own group, as the spawner runs it) can import what its server
    needs, behind ``prefix`` (run as root: making a mount namespace needs it)."""
    # runuser, not setpriv --reuid: from root, setpriv's child still passed root's
    # 0700 home here, which the user's server cannot.
    become = [RUNUSER, "-u", pwd.getpwuid(uid).pw_name, "--"]
    try:
        done = subprocess.run(
            [*prefix, *become, sys.executable, "-c", "import kernel_doctor, jupyterhub"],
            env={"PATH": "/usr/bin:/bin", "HOME": "/"},
            cwd="/",
            capture_output=True,
            timeout=60,
        )
    except OSError:
        return False
    return done.returncode == 0


def _python_for_users(uid: int, shared: Path) -> list[str]:
    """The prefix that lets the users' servers run this Python: none where they already
    can; else a private mount namespace showing them only its root (here: pyenv's)."""
    if _users_can_run(uid, []):
        return []
    home = Path("/root")
    # The Python itself (a venv's base too) and the environment, where under /root.
    inside = {Path(p) for p in (sys.prefix, sys.base_prefix) if Path(p).is_relative_to(home)}
    tops = {home / p.relative_to(home).parts[0] for p in inside}  # e.g. /root/.pyenv
    if len(tops) != 1 or shutil.which("unshare") is None:
        pytest.skip(f"{sys.executable} cannot be run by other users here")
    (top,) = tops
    mountpoint = shared / "python-root"
    mountpoint.mkdir()
    prefix = [*UNSHARE, str(top), str(mountpoint), "--"]
    if not _users_can_run(uid, prefix):
        pytest.skip(f"cannot show {top} to other users in a mount namespace")
    return prefix


def _stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def hub(cgroup_parent: str) -> Iterator[Hub]:
    tag = secrets.token_hex(2)
    names = {"victim": f"kd-hub-{tag}-ann", "bystander": f"kd-hub-{tag}-bob"}
    made: dict[str, int] = {}
    cgroup = limited_cgroup(LIMIT, "the victim's server")
    shared = Path(tempfile.mkdtemp(prefix="kd-hub-"))
    process = None
    try:
        shared.chmod(0o755)  # the users' servers read etc-jupyter in it
        for name in names.values():
            made[name] = _make_user(name)
        prefix = _python_for_users(made[names["victim"]], shared)
        etc = shared / "etc-jupyter"
        etc.mkdir()
        (etc / "jupyter_server_config.json").write_text(json.dumps(ADMIN_SETTING))
        for path in (etc, etc / "jupyter_server_config.json"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        root = shared / "hub"
        root.mkdir(mode=0o700)
        proxy_port = free_port()
        settings = {
            "root": str(root),
            "proxy_port": proxy_port,
            "hub_port": free_port(),
            "proxy_api_port": free_port(),
            "chp": CHP,
            "python": sys.executable,
            "etc_jupyter": str(etc),
            "prometheus_token": secrets.token_hex(32),
            "admin_token": secrets.token_hex(32),
            "cgroups": {names["victim"]: os.path.join(cgroup, "cgroup.procs")},
        }
        config = root / "jupyterhub_config.py"
        config.write_text(HUB_CONFIG.format(settings=repr(settings)))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "KERNEL_DOC"))}
        log = root / "hub.log"
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = Hub(
            process,
            root,
            proxy_port,
            str(settings["admin_token"]),
            str(settings["prometheus_token"]),
            log,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"the hub exited:\n{running.log_text()}"
            with contextlib.suppress(OSError):
                if running.call("GET", "/hub/api/", running.admin_token)[0] == 200:
                    break
            assert time.monotonic() < deadline, f"no hub:\n{running.log_text()[-5000:]}"
            time.sleep(0.2)
        for role, name in names.items():
            running.users[role] = User(name, made[name])
        _start_servers(running)
        yield running
    finally:
        for user in running.users.values() if process is not None else []:
            if user.notebook is not None:
                user.notebook.close()
        if process is not None:
            _stop(process)  # the hub stops the users' servers and its proxy
            pid_file = shared / "hub" / "jupyterhub-proxy.pid"
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                proxy = psutil.Process(int(pid_file.read_text()))
                if any("configurable-http-proxy" in a for a in proxy.cmdline()):
                    proxy.kill()
        for name, uid in made.items():
            _remove_user(name, uid)
        remove_cgroup_tree(cgroup)
        shutil.rmtree(shared, ignore_errors=True)


def _start_servers(hub: Hub) -> None:
    """Each user, with a token of their own: start the server through the hub's REST
    API, then a notebook on the plain python3 kernelspec through the proxy."""
    for user in hub.users.values():
        status, _ = hub.call("POST", f"/hub/api/users/{user.name}", hub.admin_token)
        assert status == 201, (status, hub.log_text()[-3000:])
        status, answer = hub.call(
            "POST", f"/hub/api/users/{user.name}/tokens", hub.admin_token, {"note": "test"}
        )
        assert status == 201, answer
        user.token = answer["token"]
        status, answer = hub.call("POST", f"/hub/api/users/{user.name}/server", user.token)
        assert status in (201, 202), (answer, hub.log_text()[-3000:])
    for user in hub.users.values():
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            status, model = hub.call("GET", f"/hub/api/users/{user.name}", user.token)
            assert status == 200, model
            server = model.get("servers", {}).get("", {})
            if server.get("ready"):
                break
            assert time.monotonic() < deadline, f"{user.name}: no server\n{hub.log_text()[-5000:]}"
            time.sleep(0.3)
        user.notebook = Notebook(UserServer(hub, user), f"{user.name}.ipynb", kernel="python3")


def _kernel_process(user: User) -> psutil.Process:
    assert user.notebook is not None
    needle = f"kernel-{user.notebook.kernel_id}.json"
    for proc in psutil.process_iter(["uids", "cmdline"]):
        argv = proc.info["cmdline"] or []
        if (
            proc.info["uids"].real == user.uid
            and any("ipykernel_launcher" in a for a in argv)
            and any(needle in a for a in argv)
            and not any("kernel_doctor.supervise" in a for a in argv)
        ):
            return proc
    raise AssertionError(f"no ipykernel process of {user.name} for {needle}")


def test_every_users_kernel_is_supervised_without_a_twin(hub: Hub) -> None:
    for role, user in hub.users.items():
        assert user.notebook is not None
        kernel = _kernel_process(user)
        supervisor = psutil.Process(kernel.ppid())
        argv = supervisor.cmdline()
        assert argv[1:4] == ["-m", "kernel_doctor.supervise", "--kernel-name"], argv
        assert argv[4] == "python3", argv  # the plain kernelspec: no twin was picked
        assert supervisor.uids().real == user.uid and kernel.uids().real == user.uid
        # The extension of the user's own server lists it, live.
        live = UserServer(hub, user).request("GET", "/kernel-doctor/api/kernels")
        assert [k["kernel_id"] for k in live] == [user.notebook.kernel_id], live
        limit = live[0]["memory"]["limit_bytes"]
        if role == "victim":
            assert limit == LIMIT, live  # the cgroup its spawner put the server in
        else:
            assert limit != LIMIT, live
        assert user.notebook.run("print(6 * 7)")[0]["content"]["text"] == "42\n"


def test_the_victims_oom_kill_is_diagnosed_in_their_next_cell(
    hub: Hub, prometheus: str | None
) -> None:
    victim, bystander = hub.users["victim"], hub.users["bystander"]
    assert victim.notebook is not None and bystander.notebook is not None
    if prometheus is not None:  # it scrapes from before the death: its graph has the step
        deadline = time.monotonic() + SCRAPE_TIMEOUT
        while len(query(prometheus, "kernel_doctor_supervised_kernels == 1")) < 2:
            assert time.monotonic() < deadline, query(prometheus, "up")
            time.sleep(0.5)
    victim.notebook.run("data = [1]")
    victim.notebook.run_until_death(unguardable_fill(2 * LIMIT // 1024**2))
    notice = assert_shown_once(victim.notebook)
    assert notice.startswith(NOTICE_START), notice
    found = re.search(r"\n  Out of memory at (In \[\d+\]), line 1: ", notice)
    assert found, notice
    hub.killed = found.group(1)
    # Every client of the victim's server reads the cause in the kernel model.
    server = UserServer(hub, victim)
    deadline = time.monotonic() + 15
    while not (model := server.request("GET", f"/api/kernels/{victim.notebook.kernel_id}")).get(
        "reason"
    ):
        assert time.monotonic() < deadline, model
        time.sleep(0.2)
    expected = f"kernel-doctor: Out of memory at {hub.killed}, line 1"
    assert model["reason"].startswith(expected), model
    # The bystander's kernel lived on, and hears nothing of it.
    outputs = bystander.notebook.run("print('still here')")
    assert [m["content"].get("text") for m in outputs] == ["still here\n"], outputs


@pytest.fixture(scope="module")
def prometheus(hub: Hub) -> Iterator[str | None]:
    """Debian's Prometheus with README's scrape config (deploy/prometheus), adapted only
    in host, scheme, token file and user names; README's alert rules loaded. None where
    it is not installed (the tests that need it skip)."""
    binary = shutil.which("prometheus")
    if binary is None:
        yield None
        return
    folder = hub.root / "prometheus"
    folder.mkdir()
    token = folder / "jupyterhub-token"
    token.write_text(hub.prometheus_token)
    token.chmod(0o600)
    text = (DEPLOY / "jupyterhub-scrape.yml").read_text()
    text = text.replace("scheme: https", "scheme: http")
    text = text.replace("hub.example.org", f"127.0.0.1:{hub.proxy_port}")
    text = text.replace("/etc/prometheus/jupyterhub-token", str(token))
    for example, role in (("alice", "victim"), ("bob", "bystander")):
        text = re.sub(rf"\b{example}\b", hub.users[role].name, text)
    config = yaml.safe_load(text)
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "kernel-doctor-rules.yml")]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "prometheus.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, log.read_text()
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        _stop(process)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    address = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(address, timeout=REPLY_TIMEOUT) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def test_prometheus_scrapes_each_user_through_the_hub_and_sees_who_died(
    hub: Hub, prometheus: str | None
) -> None:
    if prometheus is None:
        pytest.skip("Prometheus is not installed (Debian: apt-get install prometheus)")
    if hub.killed is None:
        pytest.skip("no OOM kill to look for: run with the test that causes it")
    victim, bystander = hub.users["victim"], hub.users["bystander"]
    both = {victim.name: "1", bystander.name: "1"}
    deadline = time.monotonic() + SCRAPE_TIMEOUT
    while True:
        up = {r["metric"]["user"]: r["value"][1] for r in query(prometheus, "up")}
        deaths = query(prometheus, 'kernel_doctor_deaths_total{cause="out_of_memory"} > 0')
        # The victim's new kernel, counted once the extension's next poll has seen it.
        supervised = query(prometheus, "sum by (user) (kernel_doctor_supervised_kernels)")
        kernels = {r["metric"]["user"]: r["value"][1] for r in supervised}
        if up == both and deaths and kernels == both:
            break
        assert time.monotonic() < deadline, (up, deaths, kernels)
        time.sleep(0.5)
    # The death, for the right user only.
    assert [(r["metric"]["user"], r["value"][1]) for r in deaths] == [(victim.name, "1")], deaths
    every = query(prometheus, 'kernel_doctor_deaths_total{cause="out_of_memory"}')
    assert {r["metric"]["user"]: r["value"][1] for r in every} == {
        victim.name: "1",
        bystander.name: "0",
    }, every
    # README's alert rules loaded and evaluate.
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=REPLY_TIMEOUT) as r:
        groups = json.loads(r.read())["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules and all(rule["health"] == "ok" for rule in rules), rules
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "promql.json").write_text(json.dumps({"> 0": deaths, "all": every}, indent=1))
    # Every query of the Grafana dashboard runs, on the real series.
    for expr in dashboard_exprs():
        query(prometheus, grafana_to_promql(expr))
    _screenshot(prometheus)


def test_an_unauthenticated_scrape_is_refused(hub: Hub) -> None:
    for user in hub.users.values():
        status, _ = hub.call("GET", f"/user/{user.name}/metrics", token="")
        assert status == 403, status
        status, _ = hub.call("GET", f"/user/{user.name}/metrics", token=secrets.token_hex(16))
        assert status == 403, status
        status, text = hub.call("GET", f"/user/{user.name}/metrics", hub.prometheus_token)
        assert status == 200 and "kernel_doctor_deaths_total" in text, (status, text)


def _screenshot(prometheus: str) -> None:
    """Prometheus's own graph page (Debian ships the classic UI): the victim's OOM-kill
    counter against the bystander's, and the deaths by user and cause; kept for README."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return
    if chromium is None:
        return
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    params = urllib.parse.urlencode(
        {
            "g0.expr": 'sum by (user) (kernel_doctor_deaths_total{cause="out_of_memory"})',
            "g0.tab": "0",
            "g0.range_input": "1m",
            "g1.expr": "sum by (user, cause) (kernel_doctor_deaths_total) > 0",
            "g1.tab": "1",
        }
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1160})
            page.goto(f"{prometheus}/classic/graph?{params}")
            page.locator(".graph_area svg").first.wait_for(timeout=20000)
            time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "prometheus-deaths.png"))
        finally:
            browser.close()
