"""Where checkpoints of a notebook's variables live, and how a generation is laid out.

    <data dir>/kernel-doctor/checkpoints/<notebook>/     one per notebook (0700)
        notebook.txt                                     which notebook, for people
        <kernel>/                                        one per kernel of it
            g-000003/manifest.json, v12.pkl, v12.b0 …    complete generations
            .tmp-000004/                                 one being written

A notebook is known by what the death notices use (``JPY_SESSION_NAME``, else the
connection file), so a restarted kernel finds its predecessor's checkpoints. A
generation is written under a temporary name and renamed when whole, so a death while
it is written leaves the previous one as it was. Files of variables that did not change
are hard links to the previous generation's, so each generation is complete in itself
and older ones can be removed at any time. Standard library only (see ``protocol``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

from .private import is_private_dir, private_dir, read_private, write_atomic
from .protocol import read_meta
from .records import Meta

CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
GENERATION = "g-"
TEMPORARY = ".tmp-"
VERSION = 1


# ``kernel-doctor run`` names its kernels' notebook by path: its kernels have neither
# a session name nor a connection file that outlives the run.
ENV_NOTEBOOK = "KERNEL_DOCTOR_NOTEBOOK"


def notebook_name(meta: Meta | None) -> str | None:
    """What the notebook of the kernel ``meta`` describes is known by, if anything."""
    name = os.environ.get(ENV_NOTEBOOK)
    if name:
        return name
    return (meta.session_name or meta.connection_file) if meta is not None else None


def notebook_key(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def kernel_folder_name(meta: Meta) -> str:
    return f"{int(meta.started * 1000)}-{meta.kernel_pid}"


def state_root(session_dir: str) -> str | None:
    """kernel-doctor's folder that holds the session ``session_dir`` (``<it>/sessions/
    <session>``), if it is this user's private folder: the supervisor made the session
    there through checked folders, in the data dir or in the temp-dir fallback."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(session_dir)))
    return root if is_private_dir(root) else None


def kernel_place(session_dir: str, *, create: bool) -> tuple[str, str] | None:
    """(its notebook's folder, the kernel's folder name in it) for the kernel of the
    session ``session_dir``; None where its notebook is not known or its session not
    in a private folder of this user's."""
    meta = read_meta(session_dir)
    name = notebook_name(meta)
    root = state_root(session_dir)
    if meta is None or name is None or root is None:
        return None
    return notebook_dir(root, name, create=create), kernel_folder_name(meta)


def notebook_dir(root: str, name: str, *, create: bool) -> str:
    """The notebook's folder under ``root`` (see ``state_root``)."""
    checkpoints = os.path.join(root, CHECKPOINTS)
    path = os.path.join(checkpoints, notebook_key(name))
    if create:
        private_dir(checkpoints)
        private_dir(path)
        try:
            write_atomic(os.path.join(path, "notebook.txt"), name.encode(errors="replace"))
        except OSError:
            pass
    return path


@dataclass(frozen=True)
class Generation:
    path: str
    kernel: str  # the folder of the kernel that wrote it
    number: int
    manifest: dict[str, Any]

    @property
    def variables(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest.get("variables") or {})

    @property
    def unsaved(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest.get("unsaved") or {})

    @property
    def size(self) -> int:
        return sum(int(v.get("bytes") or 0) for v in self.variables.values())

    @property
    def execution_count(self) -> int | None:
        count = self.manifest.get("execution_count")
        return count if isinstance(count, int) else None


def generations(kernel_dir: str) -> list[Generation]:
    """The kernel's complete generations, newest first."""
    found = []
    try:
        names = os.listdir(kernel_dir)
    except OSError:
        return []
    for name in names:
        number = name[len(GENERATION) :]
        if not name.startswith(GENERATION) or not number.isdigit():
            continue
        path = os.path.join(kernel_dir, name)
        manifest = read_manifest(path)
        if manifest is not None:
            found.append(Generation(path, os.path.basename(kernel_dir), int(number), manifest))
    return sorted(found, key=lambda g: g.number, reverse=True)


def read_manifest(generation_dir: str) -> dict[str, Any] | None:
    data = read_private(os.path.join(generation_dir, MANIFEST))
    try:
        manifest = json.loads(data) if data else None
    except ValueError:
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != VERSION:
        return None
    if not isinstance(manifest.get("variables"), dict):
        return None
    return manifest


def kernel_dirs(notebook: str) -> list[str]:
    """The notebook's kernels' folders, newest first (named ``<start ms>-<pid>``)."""
    try:
        entries = [e for e in os.scandir(notebook) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []

    def started(name: str) -> int:
        head = name.split("-", 1)[0]
        return int(head) if head.isdigit() else 0

    return [e.path for e in sorted(entries, key=lambda e: started(e.name), reverse=True)]


def latest(notebook: str, *, before: str | None = None) -> Generation | None:
    """The newest complete generation of the notebook's kernels other than ``before``
    (the running kernel's folder name): what a restarted kernel restores."""
    for path in kernel_dirs(notebook):
        if before is not None and os.path.basename(path) == before:
            continue
        found = generations(path)
        if found:
            return found[0]
    return None


def disk_bytes(path: str, seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes the files under ``path`` hold, a hard-linked file counted once."""
    seen = set() if seen is None else seen
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                info = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
