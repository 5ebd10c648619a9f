"""Supervised kernels running now, found from their session folders, and a look at
one of them through its supervisor (``kernel-doctor where``, ``top``, timeouts)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ._errors import CommandError, ExitCode
from .agent.naming import cell_files
from .agent.private import is_private_dir, open_fifo, printable
from .agent.protocol import (
    CONTROL,
    Look,
    Meta,
    State,
    look_file,
    read_cells,
    read_look,
    read_meta,
    read_state,
)
from .paths import session_roots
from .probe.procfs import is_supervisor, parent_of

ANSWER_TIMEOUT = 3.0  # the supervisor answers in about 0.3 s


@dataclass(frozen=True)
class LiveKernel:
    session_dir: str
    meta: Meta
    state: State

    @property
    def supervisor_pid(self) -> int:
        return self.meta.supervisor_pid

    @property
    def kernel_pid(self) -> int:
        return self.meta.kernel_pid

    @property
    def started(self) -> float:
        return self.meta.started

    @property
    def label(self) -> str:
        """The notebook where a server named it, else kernelspec / connection file,
        with control characters escaped: it is printed as it is."""
        return printable(self.meta.label)

    @property
    def busy(self) -> bool:
        return self.state.busy

    def cell_files(self) -> dict[str, int]:
        """Each earlier cell's code file → its execution count (from the flight record)."""
        return cell_files(read_cells(self.session_dir))


def trusted(session_dir: str) -> Meta | None:
    """The session's meta, if the session is of a supervisor running now that can be
    trusted: a private folder of this user's (0700, not a symlink) whose supervisor is
    this user's process started when the meta says, and the kernel's parent. Anything
    else (a folder another user planted, a process faking our command line, a session
    whose supervisor died and whose pids were reused) counts for nothing."""
    if not is_private_dir(session_dir):
        return None
    meta = read_meta(session_dir)
    if meta is None or meta.supervisor_start is None:
        return None
    if not is_supervisor(meta.supervisor_pid, meta.supervisor_start):
        return None
    if parent_of(meta.kernel_pid) != meta.supervisor_pid:
        return None
    return meta


def live_kernels() -> list[LiveKernel]:
    """Supervised kernels of this user running now, oldest first."""
    found = []
    for root in session_roots():
        if not is_private_dir(root):
            continue
        for name in _listdir(root):
            folder = os.path.join(root, name)
            meta = trusted(folder)
            if meta is not None:
                found.append(LiveKernel(folder, meta, read_state(folder) or State()))
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


def look(kernel: LiveKernel, timeout: float = ANSWER_TIMEOUT) -> Look:
    """Ask the kernel's supervisor to look at it; its answer (see supervisor.inspect)."""
    return ask(kernel.session_dir, timeout)


def ask(session_dir: str, timeout: float = ANSWER_TIMEOUT) -> Look:
    nonce = os.urandom(8).hex()
    try:
        fd = open_fifo(os.path.join(session_dir, CONTROL), os.O_WRONLY)
    except OSError as exc:
        raise CommandError(
            f"the kernel's supervisor does not listen ({exc.strerror}): it may be from an "
            "older kernel-doctor; restart the kernel"
        ) from exc
    try:
        os.write(fd, f"where {nonce}\n".encode())
    except OSError as exc:
        raise CommandError(f"cannot ask the kernel's supervisor ({exc.strerror})") from exc
    finally:
        os.close(fd)
    path = os.path.join(session_dir, look_file(nonce))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = read_look(path)
        if reply is None:
            time.sleep(0.01)
            continue
        try:
            os.unlink(path)
        except OSError:
            pass
        return reply
    raise CommandError(
        f"the kernel's supervisor did not answer within {timeout:g} s", ExitCode.TIMEOUT
    )
