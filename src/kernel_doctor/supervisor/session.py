"""A supervised kernel's session directory: where evidence is written as it happens."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

from ..agent.layout import EVENTS, META, SAMPLE, SAMPLES

SESSIONS = "sessions"
REPORTS = "reports"


def runtime_dir() -> str:
    """kernel-doctor's folder in the Jupyter runtime dir (created, mode 0700)."""
    base = os.environ.get("JUPYTER_RUNTIME_DIR")
    if not base:  # jupyter_core knows the platform rules; it costs ~5 ms to import
        from jupyter_core.paths import jupyter_runtime_dir

        base = jupyter_runtime_dir()
    path = os.path.join(base, "kernel-doctor")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


class Session:
    """Append-only files the supervisor writes while the kernel runs."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
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
        path = os.path.join(self.directory, META)
        with open(path + ".tmp", "w") as f:
            json.dump(meta, f)
        os.replace(path + ".tmp", path)

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


def read_samples(directory: str) -> list[tuple[float, int, int]]:
    try:
        with open(os.path.join(directory, SAMPLES), "rb") as f:
            data = f.read()
    except OSError:
        return []
    usable = len(data) - len(data) % SAMPLE.size
    return [SAMPLE.unpack_from(data, i) for i in range(0, usable, SAMPLE.size)]


def read_meta(directory: str) -> dict[str, Any]:
    try:
        with open(os.path.join(directory, META)) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
