"""The supervisor's looks at cells: the agent's cell timer wakes it for a cell that has
run CELL_LOOK and never for one that has not, and a look that finds a cell younger
than CELL_LOOK leaves it until it is that old. Against real processes, /proc, a real
state mapping and a real timerfd; and in a real supervised kernel."""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_doctor.agent import timer
from kernel_doctor.agent.protocol import CELL_LOOK, ENV_TIMER_FD, STATE, StateFile, read_samples
from kernel_doctor.probe.system import SystemMemory
from kernel_doctor.supervisor.sampler import Sampler
from kernel_doctor.supervisor.session import Session
from kernels import Kernels, execute, expression, write_kernelspecs


@pytest.fixture
def looks(tmp_path: Path) -> Iterator[tuple[Sampler, StateFile, Path]]:
    session = Session(str(tmp_path / "session"))
    state = StateFile(str(tmp_path / "session" / STATE), writable=True)
    sampler = Sampler(SystemMemory(), session, os.getpid(), time.monotonic(), None)
    sampler.attach_state(str(tmp_path / "session" / STATE))
    try:
        yield sampler, state, tmp_path / "session"
    finally:
        state.close()
        sampler.source.close()


def write(state: StateFile, *, busy: bool, seq: int, age: float) -> None:
    now = time.time()
    record = {"pid": os.getpid(), "busy": busy, "seq": seq, "started": now - age, "t": now}
    state.write_bytes(json.dumps(record).encode())


def test_a_young_cell_is_looked_at_again_when_it_is_cell_look_old(
    looks: tuple[Sampler, StateFile, Path],
) -> None:
    sampler, state, directory = looks
    write(state, busy=True, seq=1, age=0.0)
    before = time.monotonic()
    sampler.sample()
    assert read_samples(str(directory)) == []  # not sampled
    assert sampler.last_state.busy and sampler.last_state.seq == 1
    assert before < sampler.next_due <= time.monotonic() + CELL_LOOK

    write(state, busy=True, seq=1, age=CELL_LOOK)  # still running, CELL_LOOK on
    sampler.sample()
    assert len(read_samples(str(directory))) == 1

    write(state, busy=True, seq=2, age=0.0)  # asked for (a poke near the guard, "where")
    sampler.sample(force=True)
    assert len(read_samples(str(directory))) == 2


def test_the_cell_timer_fires_once_a_cell_has_run_cell_look() -> None:
    fd = timer.create()
    assert fd is not None and timer.is_timer(fd)
    cell = timer.CellTimer(fd, CELL_LOOK)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        started = time.monotonic()
        cell.arm()
        assert poller.poll(5000)
        assert time.monotonic() - started >= CELL_LOOK * 0.99
        assert timer.expired(fd) == 1 and timer.expired(fd) == 0  # read: cleared
        cell.arm()
        cell.disarm()  # a trivial cell: over before the look
        assert poller.poll(3 * CELL_LOOK * 1000) == []
    finally:
        cell.close()


def test_only_a_timer_is_taken_as_the_cell_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    try:
        monkeypatch.setenv(ENV_TIMER_FD, str(r))
        assert timer.take(ENV_TIMER_FD, CELL_LOOK) is None  # a pipe is not a timer
        assert ENV_TIMER_FD not in os.environ  # gone, for the kernel's own children
    finally:
        os.close(r)
        os.close(w)
    fd = timer.create()
    assert fd is not None
    monkeypatch.setenv(ENV_TIMER_FD, str(fd))
    taken = timer.take(ENV_TIMER_FD, CELL_LOOK)
    assert taken is not None and not os.get_inheritable(fd)
    taken.close()


# In a burst of cells the agent pokes at most every TIMED_POKE_GAP (0.5 s): only the
# cell timer can wake the supervisor for the cell that runs long, and it then samples
# at its busy rate (YOUNG_INTERVAL, 50 ms) until the cell ends.
LONG_CELL = """\
import os, time
session = os.environ["KERNEL_DOCTOR_SESSION"]
for _ in range(5):
    get_ipython().run_cell("pass")  # cells of their own: the burst's pokes
started = time.time()
time.sleep(0.6)
ended = time.time()
"""


def wake_ups(pid: int) -> int:
    """The voluntary context switches of ``pid``'s main thread: its sleeps in poll()."""
    for line in Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


def test_a_long_cell_in_a_burst_is_sampled_from_cell_look_on(tmp_path: Path) -> None:
    kernels = Kernels(write_kernelspecs(tmp_path))
    try:
        kernel = kernels.start("supervised")
        kc = kernel.connect()
        supervisor = kernel.process.pid
        # Trivial cells wake the supervisor for the agent's pokes (one a half second)
        # and its idle looks (one a second) only: without the timer, for every poke
        # (one a 50 ms) and every 20 ms look of a burst: 74 for these 100 cells here
        # (~1 s), 8 with it.
        before, started = wake_ups(supervisor), time.monotonic()
        for _ in range(100):
            assert execute(kc, "pass")[0]["status"] == "ok"
        woken, took = wake_ups(supervisor) - before, time.monotonic() - started
        assert woken <= 4 * took + 10 and woken < 50, (woken, took)
        reply, _ = execute(kc, LONG_CELL, session="session", started="started", ended="ended")
        assert reply["status"] == "ok", reply
        session = expression(reply, "session").strip("'")
        started, ended = float(expression(reply, "started")), float(expression(reply, "ended"))
        meta = json.loads(Path(session, "meta.json").read_text())
        t0 = float(meta["started"])
        during = [s for s in read_samples(session) if started <= t0 + s.elapsed <= ended]
        # 0.6 s at 50 ms a sample: about 12; without the timer, one idle look at most.
        assert len(during) >= 5, (len(during), read_samples(session)[-20:])
    finally:
        kernels.close()
