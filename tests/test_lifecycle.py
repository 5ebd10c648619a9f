"""The supervisor must not change how a healthy kernel behaves.

Every lifecycle case runs twice through a real ``jupyter_client`` KernelManager: on a
plain ipykernel kernelspec and on its supervised twin (the same argv behind
``python -m kernel_doctor.supervise --``). Both runs must see the same thing.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernels import (
    COUNT_SIGINTS,
    REPLY_TIMEOUT,
    START_CHILDREN,
    SUPERVISE,
    Kernels,
    assert_works,
    describe,
    execute,
    expression,
    interrupt,
    iopub_until,
    is_idle,
    reap_within,
    set_child_subreaper,
    shell_reply,
    wait_gone,
    write_kernelspecs,
)

KINDS = ["plain", "supervised"]
# How long an interrupt may take to turn into a KeyboardInterrupt reply.
INTERRUPT_LATENCY = 5.0

SLEEP_CELL = "import time\nprint('sleeping', flush=True)\ntime.sleep(30)"


# -- kernels -------------------------------------------------------------------------


@pytest.fixture
def kernelspecs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    kernels = write_kernelspecs(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return kernels


@pytest.fixture
def start_kernel(kernelspecs: Path) -> Iterator[Any]:
    kernels = Kernels(kernelspecs)
    try:
        yield kernels.start
    finally:
        kernels.close()


# -- messages ------------------------------------------------------------------------


def summary(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(msg_type, relevant content) of each message; stream chunks joined."""
    out: list[tuple[str, Any]] = []
    for msg in messages:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status":
            out.append((kind, content["execution_state"]))
        elif kind == "execute_input":
            out.append((kind, (content["code"], content["execution_count"])))
        elif kind == "stream":
            if out and out[-1][0] == "stream" and out[-1][1][0] == content["name"]:
                out[-1] = ("stream", (content["name"], out[-1][1][1] + content["text"]))
            else:
                out.append((kind, (content["name"], content["text"])))
        elif kind in ("execute_result", "display_data"):
            out.append((kind, (content["data"], content.get("execution_count"))))
        elif kind == "error":
            out.append((kind, (content["ename"], content["evalue"])))
        else:
            out.append((kind, content))
    return out


# -- 1. a healthy cell ---------------------------------------------------------------

SIMPLE_CELL = "print('hi'); 1+1"
SIMPLE_IOPUB = [
    ("status", "busy"),
    ("execute_input", (SIMPLE_CELL, 1)),
    ("stream", ("stdout", "hi\n")),
    ("execute_result", ({"text/plain": "2"}, 1)),
    ("status", "idle"),
]


@pytest.mark.parametrize("kind", KINDS)
def test_execute_iopub_identical(kind: str, start_kernel: Any) -> None:
    kernel = start_kernel(kind)
    assert kernel.kc is not None
    reply, messages = execute(kernel.kc, SIMPLE_CELL)
    assert reply["status"] == "ok"
    assert reply["execution_count"] == 1
    # The same sequence the plain kernel gives (asserted for both kinds).
    assert summary(messages) == SIMPLE_IOPUB


# -- 2./3. interrupts ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["group", "pid"])
@pytest.mark.parametrize("kind", KINDS)
def test_interrupt(kind: str, how: str, start_kernel: Any) -> None:
    kernel = start_kernel(kind)
    kc = kernel.kc
    assert kc is not None
    if how == "group":
        assert os.getpgid(kernel.process.pid) == kernel.process.pid  # a group of its own

    # A running cell becomes a KeyboardInterrupt error, promptly.
    msg_id = kc.execute(SLEEP_CELL, allow_stdin=False)
    iopub_until(kc, msg_id, lambda m: m["msg_type"] == "stream")
    sent = time.monotonic()
    interrupt(kernel, how)
    reply = shell_reply(kc, msg_id, INTERRUPT_LATENCY)
    latency = time.monotonic() - sent
    assert reply["content"]["status"] == "error", reply["content"]
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert latency < INTERRUPT_LATENCY, f"interrupt took {latency:.2f} s"
    errors = iopub_until(kc, msg_id, is_idle)
    assert [m["content"]["ename"] for m in errors if m["msg_type"] == "error"] == [
        "KeyboardInterrupt"
    ]

    # The kernel still works afterwards.
    assert_works(kc)

    # One interrupt reaches the kernel exactly once.
    msg_id = kc.execute(COUNT_SIGINTS, allow_stdin=False, user_expressions={"hits": "_kd_hits"})
    iopub_until(kc, msg_id, lambda m: m["msg_type"] == "stream")
    interrupt(kernel, how)
    reply = shell_reply(kc, msg_id, REPLY_TIMEOUT)["content"]
    iopub_until(kc, msg_id, is_idle)
    assert reply["status"] == "ok", reply
    assert expression(reply, "hits") == "1"
    assert_works(kc)


# -- 4. shutdown ---------------------------------------------------------------------


# What the plain kernel's launched process exits with after shutdown_kernel(now=False).
# With no child it exits 0 by itself. With a child, ipykernel's shutdown keeps
# signalling it for ~14 s (the child, killed by the interrupt jupyter_client sends
# first, stays an unreaped zombie of the kernel), so jupyter_client's 2.5 s grace
# ends and it sends SIGTERM to the group.
# Under load the kernel sometimes finishes within the grace after all: either is the
# plain kernel's own behaviour, so either is right for the supervised one too.
SHUTDOWN_STATUS = {"no-child": {0}, "child": {-signal.SIGTERM, 0}}


@pytest.mark.parametrize("children", list(SHUTDOWN_STATUS))
@pytest.mark.parametrize("kind", KINDS)
def test_shutdown(kind: str, children: str, start_kernel: Any) -> None:
    kernel = start_kernel(kind)
    assert kernel.kc is not None
    if children == "child":
        reply, _ = execute(
            kernel.kc,
            "import subprocess\n_kd_child = subprocess.Popen(['sleep', '300'])",
            child="_kd_child.pid",
        )
        assert int(expression(reply, "child")) in [p.pid for p in kernel.tree()]
    tree = kernel.tree()
    launched = kernel.process

    kernel.kc.stop_channels()
    kernel.kc = None
    kernel.km.shutdown_kernel(now=False)

    assert launched.returncode in SHUTDOWN_STATUS[children]
    left = wait_gone(tree, 5.0)
    assert not left, describe(left)


# -- 5. restart ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_restart(kind: str, start_kernel: Any) -> None:
    kernel = start_kernel(kind)
    assert kernel.kc is not None
    execute(kernel.kc, "import subprocess\n_kd_child = subprocess.Popen(['sleep', '300'])")
    old = kernel.tree()
    old_pid = kernel.process.pid

    kernel.km.restart_kernel(now=True)
    kc = kernel.connect()
    assert kernel.process.pid != old_pid
    reply, messages = execute(kc, SIMPLE_CELL)
    assert reply["status"] == "ok"
    assert summary(messages) == SIMPLE_IOPUB  # a fresh kernel: execution_count 1 again
    kernel.tree()

    left = wait_gone(old, 5.0)
    assert not left, describe(left)


# -- 6. kill -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_kill(kind: str, start_kernel: Any) -> None:
    kernel = start_kernel(kind)
    assert kernel.kc is not None
    reply, _ = execute(kernel.kc, START_CHILDREN, sleep="_kd_sleep.pid", deaf="_kd_deaf_sleep.pid")
    children = {int(expression(reply, "sleep")), int(expression(reply, "deaf"))}
    tree = kernel.tree()
    assert children <= {p.pid for p in tree}
    launched = kernel.process

    kernel.kc.stop_channels()
    kernel.kc = None
    kernel.km.shutdown_kernel(now=True)

    assert launched.returncode == -signal.SIGKILL
    left = wait_gone(tree, 5.0)
    assert not left, describe(left)


# -- 7. the supervisor killed alone --------------------------------------------------


def test_supervisor_sigkill_takes_kernel_along(start_kernel: Any) -> None:
    kernel = start_kernel("supervised")
    supervisor = psutil.Process(kernel.process.pid)
    ipykernel = kernel.kernel_process()
    assert ipykernel.ppid() == supervisor.pid
    orphans = [p.pid for p in supervisor.children()]  # the kernel and the sentinel
    assert ipykernel.pid in orphans

    # As a subreaper, this process adopts the supervisor's orphans and can see how
    # they died: by SIGKILL from PR_SET_PDEATHSIG at once, not by ipykernel's own
    # parent poller (which notices within a second and exits 1, and which kernels
    # other than ipykernel do not have).
    set_child_subreaper(True)
    try:
        os.kill(supervisor.pid, signal.SIGKILL)
        statuses = reap_within(orphans, 1.0)
    finally:
        set_child_subreaper(False)
        for pid in orphans:  # whatever is left is now ours: end and reap it
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    assert ipykernel.pid in statuses, "the kernel outlived its supervisor by 1 s"
    for pid, status in statuses.items():
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            pid,
            status,
        )
    assert sorted(statuses) == sorted(orphans)


# -- 8. exit status ------------------------------------------------------------------


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import os; os._exit(7)", 7),
        ("import os; os.abort()", -signal.SIGABRT),
        ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", -signal.SIGSEGV),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
    ],
    ids=["exit-7", "abort", "segv", "sigkill"],
)
@pytest.mark.parametrize("disable", ["", "1"], ids=["supervised", "disabled"])
def test_exit_status_is_the_commands(
    code: str, expected: int, disable: str, tmp_path: Path
) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    env = dict(os.environ, JUPYTER_DATA_DIR=str(runtime), KERNEL_DOCTOR_DISABLE=disable)
    command = [sys.executable, "-c", code]

    def run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            argv,
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            preexec_fn=_no_core_dumps,
        )

    plain = run(command)
    supervised = run(SUPERVISE + command)
    assert plain.returncode == expected
    assert supervised.returncode == plain.returncode, supervised.stderr.decode(errors="replace")


def test_disable_runs_the_command_in_place(tmp_path: Path) -> None:
    """KERNEL_DOCTOR_DISABLE=1: the supervisor replaces itself with the command (same
    pid, no supervisor left in between); without it the command is its child."""
    env = dict(os.environ, JUPYTER_DATA_DIR=str(tmp_path))
    command = [sys.executable, "-c", "import os; print(os.getpid(), os.getppid())"]
    for disable, in_place in (("1", True), ("", False)):
        env["KERNEL_DOCTOR_DISABLE"] = disable
        with subprocess.Popen(SUPERVISE + command, env=env, stdout=subprocess.PIPE) as proc:
            out, _ = proc.communicate(timeout=60)
        pid, ppid = map(int, out.split())
        assert proc.returncode == 0
        if in_place:
            assert pid == proc.pid
        else:
            assert ppid == proc.pid
