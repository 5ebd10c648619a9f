"""The memory guard beyond one growing cell, in real 300 MB memory cgroups: the
allocation layer (an allocation that cannot fit fails at once) and what it must not
break (threads, address-space reservations, PyTorch), growth spread over several
cells, and a cell running in an ipykernel 7 subshell thread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kernels import execute, iopub_until, is_idle, kernel_in_cgroup, shell_reply
from test_guard import FILL_TO, run, text_of

MiB = 1024**2


def test_an_impossible_allocation_fails_at_once(
    notebook: Any, tmp_path: Path, cgroup_parent: str
) -> None:
    cells = ["keep = 'earlier'", "data = bytearray(4 * 1024**3)", "print(keep)"]
    code, report, nb = run(notebook(cells), tmp_path, "--allow-errors")
    assert code == 1, report["summary"]
    assert report["outcome"] == "cell_error"
    assert report["cell"]["index"] == 1 and report["line"] == 1
    guard = report["guard"]
    assert guard["tripped"] is True and guard["layer"] == "allocation"
    assert guard["limit_bytes"] == 300 * MiB
    assert 0 < guard["usage_bytes"] < 0.5 * guard["limit_bytes"]  # refused, never filled
    assert "the memory guard refused an allocation" in report["summary"]
    assert report["memory"]["peak_bytes"] < 0.5 * 300 * MiB
    error = next(o for o in nb.cells[1].outputs if o.output_type == "error")
    assert error.ename == "MemoryError"  # the allocator's own, as without kernel-doctor
    note = text_of(nb.cells[1])
    assert note.startswith("kernel-doctor's memory guard refused this allocation at once")
    assert "The kernel and its variables are intact" in note
    assert text_of(nb.cells[2]) == "earlier\n"


def test_an_allocation_past_what_the_limit_leaves_is_refused(
    notebook: Any, tmp_path: Path, cgroup_parent: str
) -> None:
    # One allocation of a fifth of the limit at 85 %: it fits the address space and
    # any reserve of stacks, not the memory left. Without the guard, the OOM killer.
    cells = [
        FILL_TO,
        "held = []\nfill_to(0.85, held)",
        "block = bytearray(60 * 1024**2)",  # 20 % of 300 MB
        "print(len(held) > 0)",
    ]
    code, report, nb = run(notebook(cells), tmp_path, "--allow-errors")
    assert code == 1, report["summary"]
    assert report["cell"]["index"] == 2 and report["guard"]["layer"] == "allocation"
    assert report["memory"]["peak_bytes"] < 0.95 * 300 * MiB  # refused, never filled
    assert text_of(nb.cells[2]).startswith("kernel-doctor's memory guard refused this")
    assert text_of(nb.cells[3]) == "True\n"


def test_without_the_guard_the_same_allocation_kills(
    notebook: Any, tmp_path: Path, cgroup_parent: str
) -> None:
    code, report, _ = run(notebook(["data = bytearray(4 * 1024**3)"]), tmp_path, "--no-guard")
    assert code == 3 and report["cause"] == "out_of_memory", report["summary"]


# Runs at ~91 % of the limit, where the allocation layer leaves the least room.
RESERVATION = """\
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
# As PyTorch and JAX do: reserve a large PROT_NONE range, commit part of it as an
# allocator does, a chunk at a time. (Committing more than the limit leaves is
# refused like any allocation: the layer cannot know it will never be touched.)
addr = libc.mmap(None, 64 << 30, 0, 0x02 | 0x20 | 0x4000, -1, 0)
assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
assert libc.mprotect(addr, 16 << 20, mmap.PROT_READ | mmap.PROT_WRITE) == 0
ctypes.memset(addr, 1, 4 << 20)
print('reservation ok')
"""
THREADS = """\
import threading
release = threading.Event()
threads = [threading.Thread(target=release.wait) for _ in range(200)]
for t in threads:
    t.start()
release.set()
for t in threads:
    t.join()
print('threads ok', len(threads))
"""


# Threads that Python does not start (OpenMP's, PyTorch's, libzmq's), 2 x CPU count
# alive at once: glibc's stack cache that the agent filled as the kernel started.
NATIVE_THREADS = """\
import ctypes, os, time
libc = ctypes.CDLL(None)
body = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(lambda _: time.sleep(0.3))
ids = [ctypes.c_ulong() for _ in range(2 * os.cpu_count())]
errors = [libc.pthread_create(ctypes.byref(i), None, body, None) for i in ids]
for i, error in zip(ids, errors):
    if error == 0:
        libc.pthread_join(i, None)
print('native threads', errors.count(0), 'of', len(ids))
"""


def test_threads_and_reservations_near_the_limit_are_not_refused(
    notebook: Any, tmp_path: Path, cgroup_parent: str
) -> None:
    cells = [
        FILL_TO,
        "held = []\nfill_to(0.86, held)",
        "more = [bytearray(12 * 1024**2)]",  # ~91 %: past the guard by a small step
        "import time; time.sleep(1.2)",  # an idle sample: the ceiling at its tightest
        NATIVE_THREADS,
        THREADS,
        RESERVATION,
        "print('alive', len(held) > 0)",
    ]
    code, report, nb = run(notebook(cells), tmp_path)
    assert code == 0, report["summary"]
    native = 2 * (os.cpu_count() or 1)
    assert text_of(nb.cells[4]) == f"native threads {native} of {native}\n"
    assert text_of(nb.cells[5]) == "threads ok 200\n"
    assert text_of(nb.cells[6]) == "reservation ok\n"
    assert text_of(nb.cells[7]) == "alive True\n"
    assert report["memory"]["peak_bytes"] >= 0.9 * 300 * MiB


def test_pytorch_runs_under_the_allocation_layer(
    notebook: Any, tmp_path: Path, cgroup_parent: str
) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed here")
    cells = [
        "import torch\nx = torch.randn(512, 512)\ny = (x @ x).sum().item()",
        "t = torch.empty(16 * 1024**3 // 4)",  # 16 GiB: refused, not an OOM death
        "print('torch ok', torch.get_num_threads() > 0, round(y) == round(y))",
    ]
    code, report, nb = run(notebook(cells), tmp_path, "--allow-errors")
    assert code == 1, report["summary"]
    assert report["cell"]["index"] == 1
    assert report["guard"]["layer"] == "allocation"
    assert text_of(nb.cells[2]) == "torch ok True True\n"


def test_growth_across_several_cells(notebook: Any, tmp_path: Path, cgroup_parent: str) -> None:
    # From 70 % of 300 MB, 25 MiB a cell: the third step crosses the 90 % guard.
    steps = [f"step{i} = bytearray(25 * 1024**2)" for i in range(5)]
    cells = [FILL_TO, "held = []\nfill_to(0.70, held)", *steps, "print(len(held) > 0, 'alive')"]
    code, report, nb = run(notebook(cells), tmp_path, "--allow-errors")
    assert code == 1, report["summary"]
    assert report["outcome"] == "cell_error"
    assert report["cell"]["index"] == 4, report["summary"]  # step2, the crossing cell
    assert report["guard"]["layer"] == "threshold"
    errors = [i for i, c in enumerate(nb.cells) if any(o.output_type == "error" for o in c.outputs)]
    assert errors[0] == 4 and all(i >= 4 for i in errors), errors
    assert text_of(nb.cells[-1]) == "True alive\n"  # never killed, variables kept


@pytest.fixture
def supervised_in_cgroup(tmp_path: Path, cgroup_parent: str) -> Iterator[Any]:
    """A supervised ipykernel in its own 300 MB cgroup, through a KernelManager."""
    with kernel_in_cgroup(tmp_path / "kernels", 300 * MiB) as kc:
        yield kc


def test_a_subshell_cell_is_stopped_in_its_own_thread(supervised_in_cgroup: Any) -> None:
    kc = supervised_in_cgroup
    reply, _ = execute(kc, "keep = 'earlier'\nimport threading")
    assert reply["status"] == "ok", reply
    request = kc.session.msg("create_subshell_request", {})
    kc.control_channel.send(request)
    created = kc.control_channel.get_msg(timeout=10)
    if created["content"].get("status") != "ok":
        pytest.skip(f"this ipykernel has no subshells: {created['content']}")
    subshell = created["content"]["subshell_id"]

    # Growth a little slower than GROW's: the signal handler runs in the main thread,
    # which must get the GIL from the busy subshell thread first (a few ms more).
    code = (
        "import time\nin_main = threading.current_thread() is threading.main_thread()\n"
        "chunks = []\nfor i in range(100):\n"
        "    chunks.append(bytearray(10 * 1024**2))\n    time.sleep(0.005)\n"
    )
    content = {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    msg = kc.session.msg("execute_request", content)
    msg["header"]["subshell_id"] = subshell
    kc.shell_channel.send(msg)
    reply = shell_reply(kc, msg["header"]["msg_id"], 60)["content"]
    iopub_until(kc, msg["header"]["msg_id"], is_idle)
    assert reply["status"] == "error", reply
    assert reply["ename"] == "KernelDoctorMemoryError", reply
    assert "of the 300 MiB limit" in reply["evalue"]
    assert "The kernel and its variables are intact" in reply["evalue"]

    reply, _ = execute(kc, "del chunks", answer="(keep, in_main)")
    assert reply["status"] == "ok", reply
    assert reply["user_expressions"]["answer"]["data"]["text/plain"] == "('earlier', False)"
