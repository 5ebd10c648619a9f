"""Checkpoints of the user's variables, written after cells by a thread of the agent's
own, so that a death nobody could prevent loses nothing that could be saved.

What a cell costs: its end appends the cell's source to a list (and wakes the thread
if it sleeps). The thread waits until the kernel has been idle for DEBOUNCE, then writes
a generation (``store``): only variables that are new, rebound, or named by a cell
since the last one are pickled again (``pickling``); the others are hard links to the
previous generation's files. A cell that starts meanwhile stops the write (the previous
generation stays); it is tried again after that cell. What cannot be pickled is listed
with the cell that made it, so ``%doctor restore --recompute`` can run that cell again;
imports, functions and classes are kept as their statements (``cells``) and run again
first, so that instances of a notebook's own classes can be unpickled. Standard library
only (see ``protocol``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import store
from .cells import CellBook, Source, TreeKeeper, candidate, restored_by_definition
from .pickling import memo_bytes, short_error, type_name, unlink_files, write_variable
from .private import write_atomic
from .protocol import last_sample, read_meta
from .settings import size_bytes

ENV_CHECKPOINT = "KERNEL_DOCTOR_CHECKPOINT"  # off | on | always | a size cap ("20G")
DEBOUNCE = 0.3  # idle this long after a cell before a checkpoint starts
# With "always" (``kernel-doctor run --checkpoint``), cells that keep coming get a
# checkpoint this long after the first of them ended, while the next runs: only
# variables that cell does not name are written then (the ones it names could be half
# changed); needing one of those stops it. Not by default: written while cells run,
# checkpoints cost a batch of data-heavy cells a fifth of its time on 2 cores
# (benchmarks/CHECKPOINT.md); written in a person's pauses, nothing they notice.
BUSY_AFTER = 1.0
DEFAULT_CAP = 10 * 1024**3  # without a memory limit; with one, twice the limit
# A checkpoint starts only with this much room left under the memory limit (and a
# tenth of the limit): pickling a container holds a memo of every object in it.
MIN_ROOM = 64 * 1024**2


def checkpoint_setting(text: str | None) -> tuple[int, bool] | None:
    """(the size cap, 0 for the default; whether to write while cells run) that
    ``text`` asks for, or None for off."""
    value = (text or "on").strip().lower()
    if value in ("off", "no", "false", "0", "none"):
        return None
    if value in ("on", "yes", "true", ""):
        return 0, False
    if value == "always":
        return 0, True
    return size_bytes(value), False  # ValueError: the message the user reads


def start_checkpoints(agent: Any) -> Checkpointer | None:
    """The agent's checkpointer, as KERNEL_DOCTOR_CHECKPOINT says (on by default)."""
    try:
        setting = checkpoint_setting(os.environ.get(ENV_CHECKPOINT))
    except ValueError as exc:
        import sys

        sys.stderr.write(f"kernel-doctor: {exc} in {ENV_CHECKPOINT}; checkpoints are off\n")
        return None
    if setting is None:
        return None
    checkpoints = Checkpointer(agent, *setting)
    checkpoints.start()
    return checkpoints


@dataclass(frozen=True)
class Saved:
    """A variable as the last generation holds it."""

    ident: int
    kind: type
    entry: dict[str, Any]  # its manifest entry (files relative to the generation)
    directory: str  # the generation that holds its files


class Stopped(Exception):
    """The generation being written is dropped: another cell started, or the running
    one names a variable that must be written."""


class Checkpointer:
    def __init__(self, agent: Any, cap: int, always: bool = False) -> None:
        self.agent = agent
        self.always = always  # also while cells keep coming (BUSY_AFTER)
        self.shell = agent.shell
        self.cap = cap  # 0: twice the memory limit, or DEFAULT_CAP
        self.enabled = True
        self.status = "no checkpoint yet"
        self.last: store.Generation | None = None
        # Each cell that ended since the last checkpoint started (cells.Source)
        self._sources: list[Source] = []
        self._count: int | None = None  # the execution count of the state being written
        self._running: tuple[int, str] | None = None  # (seq, source) of a cell running
        # The state to write: a count, and the namespace's names after it (None: not listed)
        self._after: tuple[int | None, list[str] | None] | None = None
        self._ended = 0.0
        self._wake = threading.Event()
        self._stopping = False
        self._saved: dict[str, Saved] = {}
        self._dirty: set[str] = set()  # named by cells whose checkpoint was dropped
        self.cells = CellBook(agent.shell)
        self.keeper = TreeKeeper()  # IPython's tree of each cell, parsed in the main thread
        self._number = 0
        self._files = 0
        self._kernel_dir: str | None = None
        self._notebook: str | None = None
        self._thread = threading.Thread(target=self._run, name="kernel-doctor-checkpoint")
        self._thread.daemon = True

    # -- the cell's side: cheap ----------------------------------------------------

    def start(self) -> None:
        from .ceiling import start_unlifted

        self.keeper.install(self.shell)
        start_unlifted(self._thread)

    def after_cell(self, count: int | None, source: str) -> None:
        tree = self.keeper.take()
        if not self.enabled:
            return
        # Listing the names costs the cell more as IPython's _iN names pile up: only
        # where checkpoints are taken while cells run; else the thread lists them.
        names = list(self.shell.user_ns) if self.always else None
        self._sources.append((count, source, names, tree))
        self._ended = time.monotonic()
        if not self._wake.is_set():
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self.keeper.uninstall()

    def adopt(self, name: str, obj: object, entry: dict[str, Any], directory: str) -> None:
        """A restored variable: its files serve the next generation as they are."""
        self._saved[name] = Saved(id(obj), type(obj), entry, directory)

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            # Cells first: on a busy machine this thread's checksums, writes and syncs
            # (none of which holds the GIL) get what cells leave of the CPU.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError):
            pass
        while not self._stopping:
            self._wake.wait()
            if not self._quiet():
                return  # stopping
            self._wake.clear()
            sources, self._sources = self._sources, []
            if sources:
                self.cells.learn(sources)
                self._dirty |= self.cells.named(sources)
                self._after = (sources[-1][0], sources[-1][2])
            if self._after is None:
                continue
            count, names = self._after
            if names is None:  # the kernel is quiet: the names after its last cell
                names = list(self.shell.user_ns)
                if self.agent._cell is not None:
                    self._wake.set()  # a cell started meanwhile: once it has ended
                    continue
                self._after = (count, names)
            cell = self.agent._cell  # the one running now, if any
            self._running = (cell["seq"], cell["source"]) if cell is not None else None
            self._count = count
            try:
                self._checkpoint(names)
            except Stopped:
                self._wake.set()  # again, after the cell that stopped it (_dirty says what)
            except Exception as exc:  # never the kernel's problem
                self.status = f"the last checkpoint failed ({type(exc).__name__}: {exc})"

    def _quiet(self) -> bool:
        """Wait until no cell has run for DEBOUNCE, or BUSY_AFTER has passed; False
        when stopping."""
        since = time.monotonic()
        while not self._stopping:
            time.sleep(DEBOUNCE)
            now = time.monotonic()
            if self.agent._cell is None and now - self._ended >= DEBOUNCE:
                return True
            if self.always and now - since >= BUSY_AFTER:
                return True
        return False

    def _where(self) -> str | None:
        if self._kernel_dir is None:
            place = store.kernel_place(self.agent.session_dir, create=True)
            if place is None:
                return None
            self._notebook, kernel = place
            self._kernel_dir = os.path.join(self._notebook, kernel)
            os.makedirs(self._kernel_dir, mode=0o700, exist_ok=True)
        return self._kernel_dir

    def _memory(self) -> tuple[int | None, int | None, int]:
        """(bytes left under the memory limit, the limit, the size cap), read once a
        checkpoint from the supervisor's records."""
        meta = read_meta(self.agent.session_dir)
        if meta is None or meta.limit is None:
            return None, None, self.cap or DEFAULT_CAP
        sample = last_sample(self.agent.session_dir)
        limit = meta.limit.limit_bytes
        room = limit - sample.counted if sample is not None else None
        limited = meta.limit.kind != "system"  # system RAM is no cgroup's limit
        return room, limit, self.cap or (2 * limit if limited else DEFAULT_CAP)

    def _checkpoint(self, keys: list[str]) -> None:
        """Write the state after the last cell that ended (``keys``: its names)."""
        kernel_dir = self._where()
        if kernel_dir is None:
            self.status = (
                "off: this kernel's notebook is not known (no session name), or its "
                "session is not in a private folder of this user's"
            )
            self.enabled = False
            return
        named = self._dirty  # until a generation holds them
        room, limit, cap = self._memory()
        if room is not None and limit is not None and room < max(MIN_ROOM, limit // 10):
            self.status = "skipped: too little memory left to write one safely"
            self._after = None  # tried again after the next cell
            return
        budget = cap - self._others_bytes()
        spare = room if room is not None else 1 << 62
        namespace = self.shell.user_ns
        hidden = getattr(self.shell, "user_ns_hidden", {})
        # The names as the last cell left them: a running cell's new ones are not yet
        # part of that state.
        names = [n for n in keys if candidate(n, hidden)]
        if self._unchanged(namespace, names, named):
            self._advance()
            self._dirty, self._after = set(), None
            return
        self._number += 1
        temporary = os.path.join(kernel_dir, f"{store.TEMPORARY}{self._number:06d}")
        store.remove(temporary)
        os.mkdir(temporary, 0o700)
        try:
            manifest, saved = self._write(temporary, namespace, names, named, budget, spare)
            final = os.path.join(kernel_dir, f"{store.GENERATION}{self._number:06d}")
            data = json.dumps(manifest).encode()
            fd = os.open(os.path.join(temporary, store.MANIFEST), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, final)
        except BaseException:
            store.remove(temporary)
            raise
        self._saved = {n: Saved(s.ident, s.kind, s.entry, final) for n, s in saved.items()}
        self._dirty, self._after = set(), None
        self._prune(kernel_dir, final)
        self.last = store.Generation(final, os.path.basename(kernel_dir), self._number, manifest)
        count = manifest.get("execution_count")
        self.status = f"saved after In [{count}]" if count is not None else "saved"

    def _unchanged(self, namespace: dict[str, Any], names: list[str], named: set[str]) -> bool:
        """Nothing the last generation holds can differ: no name new, gone, rebound, or
        named by a cell since (cells that only read other variables, or print)."""
        last = self.last
        if last is None or last.manifest.get("definitions") != self.cells.definition_list():
            return False
        held = set(last.variables) | set(last.unsaved)
        defined = self.cells.definitions
        kept = {n for n in names if not restored_by_definition(n, namespace[n], defined)}
        if kept != held or kept & named:
            return False
        return all(self._saved[n].ident == id(namespace[n]) for n in last.variables)

    def _advance(self) -> None:
        """The last generation holds the state after the newest cell too: say so."""
        last = self.last
        if last is None or last.execution_count == self._count:
            return
        manifest = {**last.manifest, "execution_count": self._count, "history": self.cells.history}
        write_atomic(os.path.join(last.path, store.MANIFEST), json.dumps(manifest).encode())
        self.last = store.Generation(last.path, last.kernel, last.number, manifest)
        self.status = f"saved after In [{self._count}]"

    def _write(
        self,
        temporary: str,
        namespace: dict[str, Any],
        names: list[str],
        named: set[str],
        budget: int,
        spare: int,
    ) -> tuple[dict[str, Any], dict[str, Saved]]:
        variables: dict[str, dict[str, Any]] = {}
        unsaved: dict[str, dict[str, Any]] = {}
        saved: dict[str, Saved] = {}
        used = 0
        running = set()
        if self._running is not None:  # its tree, once IPython has parsed it
            running = self.cells.named([(None, self._running[1], None, self.keeper.tree)])
        for name in names:
            self._check_idle()
            if name not in namespace:
                if name in running:
                    raise Stopped  # the running cell deleted it: its value is gone
                continue
            obj = namespace[name]
            if restored_by_definition(name, obj, self.cells.definitions):
                continue
            previous = self._saved.get(name)
            kept = previous is not None and previous.ident == id(obj)
            if kept and previous is not None and previous.kind is type(obj) and name not in named:
                entry = self._link(previous, temporary)  # as it was, whatever runs now
            elif name in running:
                raise Stopped  # changed since, and the running cell may be changing it
            elif (need := memo_bytes(obj)) > spare // 2:
                why = f"writing it would take about {need >> 20} MiB more memory than is free"
                unsaved[name] = self._unsaved(name, obj, why)
                continue
            else:
                try:
                    entry = self._pickle(obj, temporary, previous)
                except Stopped:
                    raise
                except Exception as exc:
                    why = f"cannot be pickled ({short_error(exc)})"
                    unsaved[name] = self._unsaved(name, obj, why)
                    continue
            if used + int(entry["bytes"]) > budget:
                unlink_files(temporary, entry["files"])
                unsaved[name] = self._unsaved(name, obj, "over the checkpoints' size cap")
                continue
            used += int(entry["bytes"])
            variables[name] = entry
            saved[name] = Saved(id(obj), type(obj), entry, temporary)
        manifest = {
            "version": store.VERSION,
            "t": time.time(),
            "execution_count": self._count,
            "variables": variables,
            "unsaved": unsaved,
            "definitions": self.cells.definition_list(),
            "history": list(self.cells.history),
            "bytes": used,
        }
        return manifest, saved

    def _unsaved(self, name: str, obj: object, why: str) -> dict[str, Any]:
        count, source = self.cells.made_by.get(name, (None, ""))
        return {"type": type_name(obj), "why": why, "cell": count, "source": source}

    def _pickle(self, obj: object, temporary: str, previous: Saved | None) -> dict[str, Any]:
        self._files += 1
        digest = previous.entry.get("digest") if previous is not None else None
        entry = write_variable(obj, temporary, f"v{self._files}", digest, self._check_idle)
        if entry is None and previous is not None:  # unchanged after all
            return self._link(previous, temporary)
        assert entry is not None
        return entry

    def _link(self, previous: Saved, temporary: str) -> dict[str, Any]:
        for name in previous.entry["files"]:
            os.link(os.path.join(previous.directory, name), os.path.join(temporary, name))
        return previous.entry

    def _check_idle(self) -> None:
        """Stop when a cell other than the one running at the start runs now."""
        cell = self.agent._cell
        running = self._running[0] if self._running is not None else None
        if self._stopping or (cell is not None and cell["seq"] != running):
            raise Stopped

    def _others_bytes(self) -> int:
        """What the notebook's other kernels' checkpoints hold on disk."""
        if self._notebook is None or self._kernel_dir is None:
            return 0
        own = os.path.basename(self._kernel_dir)
        return sum(
            store.disk_bytes(path)
            for path in store.kernel_dirs(self._notebook)
            if os.path.basename(path) != own
        )

    def _prune(self, kernel_dir: str, keep: str) -> None:
        """This kernel keeps its newest generation; the notebook keeps the newest
        generation of the kernel before this one (what a restore after this kernel's
        death would not need, but one after an unwanted restart would), no more."""
        for generation in store.generations(kernel_dir):
            if generation.path != keep:
                store.remove(generation.path)
        if self._notebook is None:
            return
        others = [p for p in store.kernel_dirs(self._notebook) if p != kernel_dir]
        kept_one = False
        for path in others:
            found = store.generations(path)
            if found and not kept_one:
                kept_one = True
                for older in found[1:]:
                    store.remove(older.path)
                continue
            store.remove(path)
