"""One variable's files in a checkpoint: its pickle (protocol 5) and its buffers, which
go out of band, straight to files, without a second copy in memory. Standard library
only (see ``protocol``)."""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import zlib
from typing import Any

CHUNK = 64 * 1024**2  # buffers are hashed and written in chunks, a new cell checked between


def write_variable(
    obj: object, directory: str, base: str, previous_digest: str | None, check: Any
) -> dict[str, Any] | None:
    """Write ``obj`` as ``<base>.pkl`` and ``<base>.b<i>`` in ``directory``: its
    manifest entry, or None if its digest is ``previous_digest`` (nothing written then).
    ``check()`` runs between chunks and may raise to stop."""
    buffers: list[pickle.PickleBuffer] = []
    digest = hashlib.sha256()
    path = os.path.join(directory, base + ".pkl")
    with open(path, "xb") as file:
        pickle.Pickler(_Hashing(file, digest), protocol=5, buffer_callback=buffers.append).dump(obj)
        file.flush()
        uncache(file.fileno())
    try:
        views = [b.raw() for b in buffers]
        for view in views:
            digest.update(_crc(view, check).to_bytes(4, "little"))
            digest.update(len(view).to_bytes(8, "little"))
        fingerprint = digest.hexdigest()
        if fingerprint == previous_digest:
            os.unlink(path)  # unchanged after all: the previous files serve
            return None
        files = [base + ".pkl"]
        size = os.path.getsize(path)
        for i, view in enumerate(views):
            name = f"{base}.b{i}"
            with open(os.path.join(directory, name), "xb") as file:
                for start in range(0, len(view), CHUNK):
                    check()
                    file.write(view[start : start + CHUNK])
                    file.flush()
                    uncache(file.fileno())
            files.append(name)
            size += len(view)
    except BaseException:
        unlink_files(directory, [base + ".pkl", *(f"{base}.b{i}" for i in range(len(buffers)))])
        raise
    return {"files": files, "bytes": size, "type": type_name(obj), "digest": fingerprint}


def unlink_files(directory: str, names: list[str]) -> None:
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass


class _Hashing:
    """A file that hashes what is written to it."""

    def __init__(self, file: Any, digest: Any) -> None:
        self.file = file
        self.digest = digest

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return int(self.file.write(data))


def _crc(view: memoryview, check: Any) -> int:
    value = 0
    for start in range(0, len(view), CHUNK):
        check()
        value = zlib.crc32(view[start : start + CHUNK], value)  # without the GIL
    return value


def memo_bytes(obj: object) -> int:
    """About what pickling ``obj`` holds in memory besides what it writes: the memo,
    ~80 bytes an object (a list of a million 3-item dicts measured 260 MiB). Counted
    one level deep (from a sample of a large container's items): its items and
    theirs."""
    if not isinstance(obj, (list, tuple, dict, set, frozenset)):
        return 0
    items = obj.values() if isinstance(obj, dict) else obj
    count = len(obj)
    sample = list(itertools.islice(items, 1000))
    inner = sum(len(i) for i in sample if isinstance(i, (list, tuple, dict, set)))
    return 80 * (count + inner * count // max(1, len(sample)))


def uncache(fd: int) -> None:
    """Write what the file holds to disk and drop it from the page cache: the memory
    cgroup counts the cache of the files its processes write, so a checkpoint's would
    otherwise count against the kernel's limit (its size, measured, at 2 GB arrays)."""
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError):
        pass  # not Linux: nothing to drop


def type_name(obj: object) -> str:
    kind = type(obj)
    module = kind.__module__
    return (
        kind.__qualname__ if module in ("builtins", "__main__") else f"{module}.{kind.__qualname__}"
    )


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 120 else text[:117] + "…"
