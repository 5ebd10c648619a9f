"""The allocation layer's RLIMIT_DATA ceiling is the kernel's alone: every process the
kernel starts gets the user's limit back (forked or exec'd, however started), and a
limit the user sets in the kernel becomes the bound the ceiling never rises above.
The supervisor's side against a plain process; the agent's in a Python that loads it
by hand; both together in a real supervised kernel in a 300 MB memory cgroup."""

from __future__ import annotations

import ast
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from kernel_doctor.supervisor.ceiling import LIFT_HOLD, START_HOLD_MAX, Ceiling
from kernels import execute, expression, kernel_in_cgroup

MiB = 1024**2
GiB = 1024**3
DATA = resource.RLIMIT_DATA
# The limit the kernel starts with: finite, so that a child given the ceiling (about
# 1.3 GiB here) or an unlimited one would both show; above a 40 GiB reservation.
ORIGINAL = (48 * GiB, 64 * GiB)


def set_original() -> None:
    resource.setrlimit(DATA, ORIGINAL)


# -- the supervisor's side -------------------------------------------------------------


@pytest.fixture
def process() -> Iterator[int]:
    """A process standing for the kernel, started with ORIGINAL."""
    child = subprocess.Popen(["sleep", "30"], preexec_fn=set_original)
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def limits(pid: int) -> tuple[int, int]:
    return resource.prlimit(pid, DATA)


def test_a_limit_the_user_lowers_is_the_new_bound(process: int) -> None:
    ceiling = Ceiling(process, 300 * MiB)
    ceiling.update(100 * MiB, 200 * MiB)
    first = 200 * MiB + ceiling.reserve
    assert limits(process) == (first, ORIGINAL[1])
    user = (first - 64 * MiB, 32 * GiB)  # soft below the ceiling, hard lowered too
    resource.prlimit(process, DATA, user)
    for data, counted in ((100 * MiB, 200 * MiB), (100 * MiB, 0), (8 * GiB, 0)):
        ceiling.update(data, counted)  # room and mappings grow: never above the user's
        assert limits(process) == user
    assert ceiling.bound == user
    ceiling.update(MiB, 299 * MiB)  # a ceiling below the user's limit still moves
    assert limits(process) == (MiB + MiB + ceiling.reserve, user[1])

    above = (16 * GiB, 32 * GiB)  # lowered from the original, above the ceiling
    resource.prlimit(process, DATA, above)
    ceiling.update(MiB, 299 * MiB)  # at or above the bound: a spawn's lift, left alone
    assert limits(process) == above
    ceiling.update(MiB, 299 * MiB)  # still there, but within LIFT_HOLD: still alone
    assert limits(process) == above
    time.sleep(LIFT_HOLD)
    ceiling.update(MiB, 299 * MiB)  # still there: the user's, and the ceiling is back
    assert ceiling.bound == above
    assert limits(process) == (MiB + MiB + ceiling.reserve, above[1])

    mine = (3 * GiB, 32 * GiB)  # above the ceiling: the user's, kept when it is off
    resource.prlimit(process, DATA, mine)
    ceiling.release()
    assert limits(process) == mine and ceiling.current is None


def test_the_agents_lift_and_an_older_ceiling_are_not_the_users(process: int) -> None:
    ceiling = Ceiling(process, 300 * MiB)
    ceiling.update(100 * MiB, 200 * MiB)
    older = limits(process)
    resource.prlimit(process, DATA, ORIGINAL)  # the agent lifts it for a spawn
    ceiling.update(100 * MiB, 0)
    assert limits(process) == ORIGINAL  # left alone for the spawn's child
    time.sleep(LIFT_HOLD)
    ceiling.update(100 * MiB, 0)  # later (a long os.system): the ceiling again
    newer = limits(process)
    assert newer == (400 * MiB + ceiling.reserve, ORIGINAL[1])
    resource.prlimit(process, DATA, older)  # the agent puts back the one it lifted
    ceiling.update(100 * MiB, 0)
    assert limits(process) == newer  # ours: moved on, not taken for the user's
    assert ceiling.bound == ORIGINAL


def test_a_limit_set_between_reading_and_writing_is_kept(process: int) -> None:
    ceiling = Ceiling(process, 300 * MiB)
    ceiling.update(100 * MiB, 200 * MiB)
    read = ceiling._read

    def stale(set_meanwhile: tuple[int, int]) -> None:
        """The next update reads what is there now, then ``set_meanwhile`` is set."""
        seen = limits(process)

        def read_then_set() -> tuple[int, int] | None:
            ceiling._read = read  # type: ignore[method-assign]
            resource.prlimit(process, DATA, set_meanwhile)
            return seen

        ceiling._read = read_then_set  # type: ignore[method-assign]

    stale(ORIGINAL)  # the agent's lift, in between
    ceiling.update(100 * MiB, 0)
    assert limits(process) == ORIGINAL  # handed back to the spawn
    assert ceiling.bound == ORIGINAL
    assert ceiling.current is not None
    resource.prlimit(process, DATA, (ceiling.current, ORIGINAL[1]))  # the agent undoes it
    # The user's, in between, with a lower hard limit: our write fails where we may
    # not raise that again (no CAP_SYS_RESOURCE), or raises it where we may; either
    # way the user's limits are what is left.
    user = (150 * MiB, 40 * GiB)  # below the ceiling (300 MiB), none of our ceilings
    stale(user)
    ceiling.update(100 * MiB, 100 * MiB)  # a ceiling that moved: set
    assert limits(process) == user and ceiling.bound == user
    assert ceiling.error is None


def test_the_ceiling_stays_while_a_thread_starts(process: int) -> None:
    # A new thread that finds no room for its first frames dies before it says it
    # runs, and Thread.start waits for it forever: nothing moves while one starts.
    ceiling = Ceiling(process, 300 * MiB)
    starting = [0]
    ceiling.starts = lambda: starting[0]
    ceiling.update(100 * MiB, 200 * MiB)
    first = limits(process)
    starting[0] = 1
    ceiling.update(100 * MiB, 250 * MiB)  # room shrank: not lowered while it starts
    assert limits(process) == first
    resource.prlimit(process, DATA, ORIGINAL)  # the agent's lift for the start
    ceiling.update(100 * MiB, 250 * MiB)
    time.sleep(LIFT_HOLD)
    ceiling.update(100 * MiB, 250 * MiB)  # past LIFT_HOLD, but still starting
    assert limits(process) == ORIGINAL
    starting[0] = 0
    ceiling.update(100 * MiB, 250 * MiB)  # over: the lift held LIFT_HOLD from now
    assert limits(process) == ORIGINAL
    time.sleep(LIFT_HOLD)
    ceiling.update(100 * MiB, 250 * MiB)
    assert limits(process) == (150 * MiB + ceiling.reserve, ORIGINAL[1])
    assert ceiling.bound == ORIGINAL

    # A count that never goes back to zero (an agent unloaded mid-start) holds the
    # ceiling for START_HOLD_MAX at most.
    starting[0] = 1
    ceiling.update(100 * MiB, 260 * MiB)
    assert limits(process) == (150 * MiB + ceiling.reserve, ORIGINAL[1])  # held
    ceiling._starting_since -= START_HOLD_MAX
    ceiling.update(100 * MiB, 260 * MiB)
    assert limits(process) == (140 * MiB + ceiling.reserve, ORIGINAL[1])
    starting[0] = 0

    # A start that begins between the look and the write gets back what it saw.
    checks = iter([0, 1])
    ceiling.starts = lambda: next(checks, 0)
    before = limits(process)
    ceiling.update(100 * MiB, 280 * MiB)
    assert limits(process) == before


def test_a_lower_ceiling_counts_what_was_mapped_since_the_sample(tmp_path: Path) -> None:
    # The sample read the kernel's mappings before its newest threads' stacks: a
    # ceiling from that figure would be below what it has mapped by the time it is set.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; x = bytearray(64 << 20); print(); time.sleep(30)"],
        stdout=subprocess.PIPE,
        preexec_fn=set_original,
    )
    try:
        assert child.stdout is not None and child.stdout.readline()
        with open(f"/proc/{child.pid}/statm") as f:
            mapped = int(f.read().split()[5]) * resource.getpagesize()
        assert mapped > 64 * MiB
        ceiling = Ceiling(child.pid, 300 * MiB)
        ceiling.update(mapped, 100 * MiB)
        assert limits(child.pid)[0] == mapped + 200 * MiB + ceiling.reserve
        ceiling.update(MiB, 290 * MiB)  # lower, from a stale sample: the mappings now
        assert limits(child.pid)[0] == mapped + 10 * MiB + ceiling.reserve
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]


def test_a_held_ceiling_keeps_half_the_room_until_released(process: int) -> None:
    # After a trip: the stopped cell's other threads may take half of what is left.
    ceiling = Ceiling(process, 300 * MiB)
    ceiling.update(100 * MiB, 200 * MiB)
    assert limits(process)[0] == 200 * MiB + ceiling.reserve
    ceiling.hold = 100 * MiB + 50 * MiB
    ceiling.update(100 * MiB, 200 * MiB)
    assert limits(process)[0] == 150 * MiB
    ceiling.update(100 * MiB, 0)  # room grew meanwhile: still held
    assert limits(process)[0] == 150 * MiB
    ceiling.hold = None  # the cell is over
    ceiling.update(100 * MiB, 0)
    assert limits(process)[0] == 400 * MiB + ceiling.reserve


# -- the agent's side ------------------------------------------------------------------

# Loads the agent's half by hand in a Python standing for the kernel, under a ceiling
# set as the supervisor sets it (past the agent's wrappers), and starts children every
# way there is. Each prints its RLIMIT_DATA (the shell one prints its own line).
CHILDREN = """\
import multiprocessing, os, resource, subprocess, sys, types

DATA = resource.RLIMIT_DATA
PRINT = "import resource; print(resource.getrlimit(resource.RLIMIT_DATA))"
RESERVE = (
    "import mmap; mmap.mmap(-1, 40 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS"
    " | 0x4000); print('reserved')"  # MAP_NORESERVE
)


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs).stdout.strip()


def spawned(spawn, *args):
    r, w = os.pipe()
    pid = spawn(*args, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        return f.read().strip()


if __name__ == "__main__":
    os.environ["KERNEL_DOCTOR_DATA_LIMIT"] = str(resource.getrlimit(DATA)[0])
    from kernel_doctor.agent import ceiling as guard

    agent = types.SimpleNamespace()
    guard.keep_children_limit(agent)
    supervisor_sets = getattr(resource.setrlimit, guard._WRAPPED)
    supervisor_sets(DATA, (1 << 30, resource.getrlimit(DATA)[1]))
    python = [sys.executable, "-c", PRINT]
    got = {
        "kernel": str(resource.getrlimit(DATA)),
        "run": run(python),
        "reserve": run([sys.executable, "-c", RESERVE]),
        "close_fds=False": run(python, close_fds=False),
        "preexec_fn": run(python, preexec_fn=lambda: None),
        "shell": run(f"{sys.executable} -c '{PRINT}'", shell=True),
        "posix_spawn": spawned(os.posix_spawn, sys.executable, python),
        "posix_spawnp": spawned(os.posix_spawnp, sys.executable, python),
    }
    got["kernel after"] = str(resource.getrlimit(DATA))
    import threading
    threading.Thread(target=len, args=((),)).start()  # its stack fits: no lift
    thread_kept = str(resource.getrlimit(DATA))
    mapped = int(open("/proc/self/statm").read().split()[5]) * 4096
    supervisor_sets(DATA, (mapped, resource.getrlimit(DATA)[1]))
    threading.Thread(target=len, args=((),)).start()  # no room: lifted, left for us
    got["a thread's lift"] = str(resource.getrlimit(DATA))
    supervisor_sets(DATA, (1 << 30, resource.getrlimit(DATA)[1]))
    for method in ("fork", "spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(1) as pool:
            got[method] = str(pool.apply(resource.getrlimit, (DATA,)))
        supervisor_sets(DATA, (1 << 30, resource.getrlimit(DATA)[1]))  # after its threads
    got["kernel after threads"] = str(resource.getrlimit(DATA))
    print(repr(got), flush=True)
    print(thread_kept, flush=True)
    pid = os.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-c", "print('fork+execv', end=' '); " + PRINT])
    os.waitpid(pid, 0)
    sys.stdout.flush()
    os.system(f"printf 'system '; {sys.executable} -c '{PRINT}'")
"""


def test_every_child_of_the_kernel_gets_the_users_limit(tmp_path: Path) -> None:
    script = tmp_path / "children.py"
    script.write_text(CHILDREN)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=set_original,
    )
    assert done.returncode == 0, done.stderr
    first, thread_kept, *shell = done.stdout.splitlines()
    assert thread_kept == str((GiB, ORIGINAL[1]))  # a thread whose stack fits: no lift
    got = ast.literal_eval(first)
    ceiling = str((GiB, ORIGINAL[1]))
    assert got.pop("kernel") == got.pop("kernel after") == ceiling
    assert got.pop("kernel after threads") == ceiling
    assert got.pop("reserve") == "reserved"  # 40 GiB, which the ceiling would refuse
    assert got == dict.fromkeys(got, str(ORIGINAL)), got
    assert shell == [f"fork+execv {ORIGINAL}", f"system {ORIGINAL}"], done.stdout


# A thread start is counted in the state mapping from before the agent's look at the
# ceiling until Thread.start returns (the new thread has run its first lines), as seen
# by the new thread itself before it says it runs, and by the supervisor's reader.
COUNTED = """\
import os, resource, sys, threading, types
from kernel_doctor.agent import ceiling as guard
from kernel_doctor.agent.protocol import StateFile

os.environ["KERNEL_DOCTOR_DATA_LIMIT"] = str(resource.getrlimit(resource.RLIMIT_DATA)[0])
state = StateFile(sys.argv[1], writable=True)
reader = StateFile(sys.argv[1], writable=False)
guard.keep_children_limit(types.SimpleNamespace(_state=state))
seen = []

class Thread(threading.Thread):
    def _set_ident(self):  # in the new thread, before Thread.start may return
        seen.append(reader.thread_starts())
        super()._set_ident()

threads = [Thread(target=len, args=((),)) for _ in range(3)]
for thread in threads:
    thread.start()
    seen.append(reader.thread_starts())
print(seen)
"""


def test_a_thread_start_is_counted_until_it_returns(tmp_path: Path) -> None:
    script = tmp_path / "counted.py"
    script.write_text(COUNTED)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=set_original,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str([1, 0] * 3)


# -- both, in a supervised kernel ------------------------------------------------------


@pytest.fixture(scope="module")
def kernel(
    tmp_path_factory: pytest.TempPathFactory, cgroup_parent: str
) -> Iterator[BlockingKernelClient]:
    """One supervised ipykernel for this module's tests, started with ORIGINAL in its
    own 300 MB cgroup, where the guard and its ceiling are on."""
    with kernel_in_cgroup(tmp_path_factory.mktemp("kernels"), 300 * MiB, set_original) as kc:
        yield kc


def run_cell(kc: BlockingKernelClient, code: str) -> Any:
    """Run ``code``; the value it leaves in ``result``."""
    reply, _ = execute(kc, code, result="result")
    assert reply["status"] == "ok", reply
    return ast.literal_eval(expression(reply, "result"))


KERNEL_CHILDREN = """\
import multiprocessing, os, resource, subprocess, sys, tempfile, time
PRINT = "import resource; print(resource.getrlimit(resource.RLIMIT_DATA))"
RESERVE = (
    "import mmap; mmap.mmap(-1, 40 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS"
    " | 0x4000); print('reserved')"  # MAP_NORESERVE
)
deadline = time.monotonic() + 10  # the supervisor's first sample sets the ceiling
original = int(os.environ["KERNEL_DOCTOR_DATA_LIMIT"])  # the supervisor's, passed on
while resource.getrlimit(resource.RLIMIT_DATA)[0] == original and time.monotonic() < deadline:
    time.sleep(0.02)

def run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
with tempfile.NamedTemporaryFile("r") as out:
    os.system(f"{sys.executable} -c '{PRINT}' > {out.name}")
    system = out.read()
with multiprocessing.get_context("spawn").Pool(1) as pool:
    spawned = pool.apply(resource.getrlimit, (resource.RLIMIT_DATA,))
result = (
    resource.getrlimit(resource.RLIMIT_DATA), run(PRINT), run(RESERVE), system, spawned,
    resource.getrlimit(resource.RLIMIT_DATA),
)
"""


def test_children_of_a_guarded_kernel_get_its_original_limit(kernel: Any) -> None:
    before, run, reserve, system, spawned, after = run_cell(kernel, KERNEL_CHILDREN)
    assert before[0] < 2 * GiB and before[1] == ORIGINAL[1], before  # the guard's ceiling
    assert after[0] < 2 * GiB, after  # the ceiling is back after the spawns
    assert run == system == f"{ORIGINAL}\n"
    assert reserve == "reserved\n"  # 40 GiB, MAP_NORESERVE: as in a plain kernel
    assert spawned == ORIGINAL


# The user's limit is watched for 2 s of samples; halfway, 64 MiB mapped but not
# touched raise the ceiling the supervisor would set by as much.
USER_LIMIT = """\
import mmap, os, resource, subprocess, sys, time
DATA = resource.RLIMIT_DATA
with open("/proc/self/statm") as f:
    mapped = int(f.read().split()[5]) * os.sysconf("SC_PAGE_SIZE")
ceiling = resource.getrlimit(DATA)[0]
user = ({soft}, {hard})
resource.setrlimit(DATA, user)
highest, seen, spare = 0, set(), None
start = time.monotonic()
while time.monotonic() < start + 2:
    soft, hard = resource.getrlimit(DATA)
    highest = max(highest, soft)
    seen.add(hard)
    if spare is None and time.monotonic() > start + 1:
        spare = mmap.mmap(-1, 64 * 1024**2, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    time.sleep(0.005)
child = subprocess.run(
    [sys.executable, "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_DATA))"],
    capture_output=True, text=True,
).stdout
result = (user, ceiling, resource.getrlimit(DATA), highest, sorted(seen), child)
"""


def test_a_limit_the_user_lowers_is_kept_and_passed_on(kernel: Any) -> None:
    # A little above what the kernel has mapped, so below the ceiling (that plus the
    # 200 MiB or so the 300 MB limit leaves): in force all along, and passed on.
    soft, hard = "mapped + 128 * 1024**2", "resource.getrlimit(DATA)[1]"
    user, ceiling, now, highest, hards, child = run_cell(
        kernel, USER_LIMIT.format(soft=soft, hard=hard)
    )
    assert user[0] < ceiling
    assert now == user and highest == user[0] and hards == [ORIGINAL[1]]
    assert child == f"{user}\n"

    # Lowered from the original, above the ceiling, and the hard limit too: the
    # ceiling stays in force, never above it, and children get the user's limit.
    user, ceiling, now, highest, hards, child = run_cell(
        kernel, USER_LIMIT.format(soft=8 * GiB, hard=32 * GiB)
    )
    assert now[0] < 2 * GiB and now[1] == 32 * GiB, now  # the ceiling back under it
    assert highest <= 8 * GiB and hards == [32 * GiB]
    assert child == f"{(8 * GiB, 32 * GiB)}\n"
