"""Supervised kernels running now, found from their session folders, and a look at
one of them through its supervisor (``kernel-doctor where``, ``top``, timeouts)."""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from ._errors import CommandError, ExitCode
from .agent.layout import read_cells, read_meta, read_state
from .probe.procfs import is_supervisor
from .supervisor.control import CONTROL
from .supervisor.session import SESSIONS, runtime_dir

ANSWER_TIMEOUT = 3.0  # the supervisor answers in about 0.3 s


@dataclass(frozen=True)
class LiveKernel:
    session_dir: str
    supervisor_pid: int
    kernel_pid: int
    label: str  # the notebook where a server named it, else kernelspec / connection file
    started: float
    meta: dict[str, Any]
    state: dict[str, Any]

    @property
    def busy(self) -> bool:
        return bool(self.state.get("busy"))

    def cell_files(self) -> dict[str, int]:
        """Each earlier cell's code file → its execution count (from the flight record)."""
        counts: dict[int, Any] = {}
        files: dict[str, int] = {}
        for record in read_cells(self.session_dir):
            if record.get("event") == "start":
                counts[record.get("seq", -1)] = record.get("execution_count")
            elif record.get("event") == "end" and record.get("file"):
                count = counts.get(record.get("seq", -1))
                if isinstance(count, int):
                    files[str(record["file"])] = count
        return files


def _roots() -> list[str]:
    roots = [os.path.join(runtime_dir(create=False), SESSIONS)]
    roots.append(os.path.join(tempfile.gettempdir(), f"kernel-doctor-{os.getuid()}", SESSIONS))
    return roots


def live_kernels() -> list[LiveKernel]:
    """Supervised kernels of this user running now, oldest first."""
    folders = [os.path.join(root, name) for root in _roots() for name in _listdir(root)]
    # `kernel-doctor run` keeps its session in a private temp folder.
    folders += glob.glob(os.path.join(tempfile.gettempdir(), "kernel-doctor-run-*"))
    found = []
    for folder in folders:
        meta = read_meta(folder)
        if not meta or not is_supervisor(meta.get("supervisor_pid")):
            continue
        kernel_pid = meta.get("kernel_pid")
        if not isinstance(kernel_pid, int) or not os.path.exists(f"/proc/{kernel_pid}"):
            continue
        label = meta.get("session_name") or " ".join(
            p
            for p in (
                meta.get("kernel_name") or "",
                os.path.basename(meta.get("connection_file") or ""),
            )
            if p
        )
        found.append(
            LiveKernel(
                folder,
                int(meta["supervisor_pid"]),
                kernel_pid,
                str(label or "-"),
                float(meta.get("started") or 0),
                meta,
                read_state(folder) or {},
            )
        )
    return sorted(found, key=lambda k: k.started)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def pick(kernels: list[LiveKernel], wanted: str | None) -> LiveKernel:
    """The kernel ``wanted`` names (a pid, a session folder's name, part of the
    notebook's name); with none, the one busy kernel, or the only kernel."""
    if not kernels:
        raise CommandError(
            "no supervised kernel is running for this user (start one from a kernelspec "
            "that `kernel-doctor install` wrote)"
        )
    if wanted:
        matches = [
            k
            for k in kernels
            if wanted in (str(k.kernel_pid), str(k.supervisor_pid))
            or os.path.basename(k.session_dir) == wanted
            or wanted in k.label
        ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise CommandError(
                f"no running supervised kernel matches {wanted!r}\n{listing(kernels)}"
            )
        raise CommandError(
            f"{wanted!r} matches several kernels: name one by pid\n{listing(kernels)}"
        )
    busy = [k for k in kernels if k.busy]
    if len(busy) == 1:
        return busy[0]
    if len(kernels) == 1:
        return kernels[0]
    which = "busy kernels" if busy else "kernels, none busy"
    raise CommandError(f"several {which}: name one by pid\n{listing(busy or kernels)}")


def listing(kernels: list[LiveKernel]) -> str:
    lines = []
    for k in kernels:
        state = "busy" if k.busy else "idle"
        lines.append(f"  pid {k.kernel_pid:<8} {state:<5} {k.label}")
    return "\n".join(lines)


def look(kernel: LiveKernel, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
    """Ask the kernel's supervisor to look at it; its answer (see supervisor.inspect)."""
    return ask(kernel.session_dir, timeout)


def ask(session_dir: str, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
    nonce = os.urandom(8).hex()
    try:
        fd = os.open(os.path.join(session_dir, CONTROL), os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise CommandError(
            f"the kernel's supervisor does not listen ({exc.strerror}): it may be from an "
            "older kernel-doctor; restart the kernel"
        ) from exc
    try:
        os.write(fd, f"where {nonce}\n".encode())
    finally:
        os.close(fd)
    path = os.path.join(session_dir, f"where-{nonce}.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="utf-8") as f:
                reply: dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            time.sleep(0.01)
            continue
        os.unlink(path)
        return reply
    raise CommandError(
        f"the kernel's supervisor did not answer within {timeout:g} s", ExitCode.TIMEOUT
    )
