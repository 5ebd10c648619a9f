"""The supervisor's looks in a burst of cells: a look that finds a cell younger than
CELL_LOOK leaves it until it is that old (as a cell the agent announced), and one
that finds it older samples it. Against a real process (this one), real /proc and a
real state mapping, written as the agent writes it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_doctor.agent.protocol import STATE, StateFile, read_samples
from kernel_doctor.probe.system import SystemMemory
from kernel_doctor.supervisor.sampler import CELL_LOOK, Sampler
from kernel_doctor.supervisor.session import Session


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
