"""The supervisor's looks at a busy kernel (``kernel-doctor where``, ignored
interrupts): typed records of the session protocol, and the schema a look read from
disk is checked against. Standard library only (see ``protocol``)."""

from __future__ import annotations

from typing import Any, TypedDict

Frame = list[str | int]  # [file, line, function] (+ [source] from the agent), as JSON


class LookCell(TypedDict):
    execution_count: int | None
    source: str | None
    t: float
    cell_id: str | None


class LookPhase(TypedDict):
    phase: str  # "traceback": IPython formats one
    error: str | None
    depth: int | None


class OsThread(TypedDict, total=False):
    """One thread as /proc shows it (``probe.threads``), with its CPU share."""

    tid: int
    name: str
    state: str  # R running, S sleeping, D uninterruptible, …
    cpu_ticks: int
    wchan: str | None
    syscall: str | None
    target: str | None
    network_fs: str | None
    cpu: float
    verdict: str


class PyThread(TypedDict):
    """One thread's Python stack as the agent sees it (``agent.where``)."""

    ident: int
    native_id: int | None
    name: str
    main: bool
    depth: int
    frames: list[Frame]  # innermost last


class Look(TypedDict, total=False):
    """The supervisor's look at a kernel (``supervisor.inspect`` writes it)."""

    nonce: str
    t: float
    kernel_pid: int
    busy: bool
    seq: int | None
    started: float | None
    line: int | None
    file: str | None
    frame: Frame | None
    phase: LookPhase | None  # while a traceback is formatted
    cell: LookCell | None
    verdict: str  # the main thread's, from the OS: "running", "sleeping", …
    os_threads: list[OsThread]
    python: list[PyThread] | None  # the agent's stacks
    main_dump: list[Frame] | None  # faulthandler's dump of the main thread
    ignored_interrupt: Look | None  # the look kept at an ignored interrupt
    ignored_for: float
    label: str  # added by ``kernel-doctor where``: the kernel's notebook
    summary: str  # and its one-sentence verdict


# What a look read from disk must be, key by key (see ``valid``): a type, several
# (None for null), an object's keys, or [element] for a list of them.
_NUMBER = (int, float)
_FRAME = [(str, int)]
_THREAD = {"tid": int, "name": str, "state": str, "cpu_ticks": int, "cpu": _NUMBER}
_PY_THREAD = {"ident": int, "native_id": (int, None), "name": str, "main": bool,
              "depth": int, "frames": [_FRAME]}  # fmt: skip
LOOK_SCHEMA: dict[str, Any] = {
    "nonce": str, "t": _NUMBER, "kernel_pid": int, "busy": bool, "seq": (int, None),
    "started": (*_NUMBER, None), "line": (int, None), "file": (str, None),
    "frame": (_FRAME, None), "verdict": str, "ignored_for": _NUMBER,
    "phase": ({"phase": str, "error": (str, None), "depth": (int, None)}, None),
    "cell": ({"execution_count": (int, None), "source": (str, None), "t": _NUMBER,
              "cell_id": (str, None)}, None),
    "os_threads": [_THREAD], "python": ([_PY_THREAD], None), "main_dump": ([_FRAME], None),
}  # fmt: skip
LOOK_SCHEMA["ignored_interrupt"] = (LOOK_SCHEMA, None)


def valid(value: object, spec: Any) -> bool:
    """``value`` (JSON) is as ``spec`` says; an object's missing keys are allowed."""
    if spec is None:
        return value is None
    if isinstance(spec, type):
        return isinstance(value, spec) and (spec is bool or not isinstance(value, bool))
    if isinstance(spec, tuple):
        return any(valid(value, one) for one in spec)
    if isinstance(spec, list):
        return isinstance(value, list) and all(valid(item, spec[0]) for item in value)
    if isinstance(spec, dict):
        return isinstance(value, dict) and all(
            valid(value[key], kind) for key, kind in spec.items() if key in value
        )
    return False


class AgentAnswer(TypedDict):
    """The agent's part of a look: every thread's Python stack (agent.where)."""

    nonce: str
    threads: list[PyThread]
