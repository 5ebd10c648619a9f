"""A supervised kernel's session directory: where evidence is written as it happens."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

from ..agent.layout import EVENTS, META, SAMPLE, SAMPLES, read_meta, read_samples

SESSIONS = "sessions"
REPORTS = "reports"


def runtime_dir(create: bool = True) -> str:
    """kernel-doctor's folder in the Jupyter runtime dir (mode 0700 when created)."""
    base = os.environ.get("JUPYTER_RUNTIME_DIR")
    if not base:  # jupyter_core knows the platform rules; it costs ~5 ms to import
        from jupyter_core.paths import jupyter_runtime_dir

        base = jupyter_runtime_dir()
    path = os.path.join(base, "kernel-doctor")
    if create:
        os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def fallback_sessions_dir() -> str:
    """Where evidence goes when the runtime dir cannot be written: a private folder
    in the temp dir, refused if someone else made it first."""
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"kernel-doctor-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not os.path.isdir(path):
        raise PermissionError(13, "not a private folder of this user", path)
    return os.path.join(path, SESSIONS)


class Session:
    """Append-only files the supervisor writes while the kernel runs.

    Writes that fail (a full disk) are dropped: the kernel matters more than its
    evidence. What the diagnosis cannot do without is also kept in memory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.meta: dict[str, Any] = {}
        self.write_error: OSError | None = None
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._events = os.open(
            os.path.join(directory, EVENTS), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
        )
        self._samples = os.open(
            os.path.join(directory, SAMPLES), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
        )

    @classmethod
    def create(cls, base: str | None = None) -> Session:
        root = base or os.path.join(runtime_dir(), SESSIONS)
        name = f"{os.getpid()}-{int(time.time() * 1000)}"
        return cls(os.path.join(root, name))

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        path = os.path.join(self.directory, META)
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(meta, f)
            os.replace(path + ".tmp", path)
        except OSError as exc:
            self.write_error = exc
            with contextlib.suppress(OSError):
                os.unlink(path + ".tmp")

    def event(self, kind: str, **fields: Any) -> None:
        record = {"event": kind, "t": time.time(), **fields}
        with contextlib.suppress(OSError):
            os.write(self._events, json.dumps(record).encode() + b"\n")

    def sample(self, elapsed: float, counted: int, kernel_rss: int) -> None:
        with contextlib.suppress(OSError):
            os.write(self._samples, SAMPLE.pack(elapsed, counted, kernel_rss))

    def close(self) -> None:
        for fd in (self._events, self._samples):
            with contextlib.suppress(OSError):
                os.close(fd)

    def remove(self) -> None:
        import shutil

        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def read_events(directory: str) -> list[dict[str, Any]]:
    records = []
    try:
        with open(os.path.join(directory, EVENTS), "rb") as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        pass
    return records


__all__ = ["Session", "read_events", "read_meta", "read_samples", "runtime_dir"]
