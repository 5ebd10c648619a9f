"""Private files: the one way kernel-doctor opens, writes and trusts its own files.

Session folders and reports live in folders other local users may reach (a shared
data dir, ``/tmp`` on a lab server), and root's tools read them too. So nothing is
opened by a plain ``open()``: a file counts only if it is a regular file (or, for the
control channel, a FIFO) owned by this user, reached without following a symlink, and
opening it can never block (a FIFO planted where a file is expected would otherwise
hang the reader, a Jupyter server's event loop included). Folders count only if they
are this user's, mode 0700 and not symlinks. Files are created 0600.

Standard library only: the agent imports this inside the kernel, whose Python may lack
kernel-doctor.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat

# Never follow a symlink, never block on a FIFO or device, never leak into children.
_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Files of a session are small; a larger one was not written by kernel-doctor.
MAX_READ = 64 * 1024**2


class UntrustedFile(PermissionError):
    """A path that is not this user's own regular file, FIFO or private folder."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.EPERM, why, path)


def _check_owner(info: os.stat_result, path: str) -> None:
    if info.st_uid != os.geteuid():
        raise UntrustedFile(path, f"owned by uid {info.st_uid}, not by this user")


def open_private(path: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """A descriptor for ``path``, this user's own regular file, opened without
    following a symlink or blocking. Raises ``OSError`` (``UntrustedFile`` when the
    file is there but not to be trusted)."""
    fd = os.open(path, flags | _SAFE, mode)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedFile(path, "not a regular file")
        _check_owner(info, path)
        if flags & (os.O_WRONLY | os.O_RDWR) and info.st_mode & 0o077:
            os.fchmod(fd, 0o600)  # one an older version made 0644
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: str, limit: int = MAX_READ) -> bytes | None:
    """The contents of this user's regular file ``path``; None if it is missing,
    unreadable, not to be trusted, or larger than ``limit``."""
    try:
        fd = open_private(path)
    except OSError:
        return None
    try:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)


def append_private(path: str) -> int:
    """An append-only descriptor for this user's file ``path``, created 0600."""
    return open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once: a reader sees the old or the new file,
    never half of one. The file is created 0600 next to ``path`` under a name no one
    else can have made first (O_EXCL), and renamed over ``path``: a symlink or FIFO
    planted at ``path`` is replaced, never followed."""
    directory, name = os.path.split(path)
    for attempt in range(100):
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _SAFE, 0o600)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_private_dir(path: str) -> None:
    """Raise ``OSError`` unless ``path`` is this user's own folder, mode 0700 (no
    access for anyone else), and not a symlink."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UntrustedFile(path, "not a folder (or a symlink to one)")
    _check_owner(info, path)
    if info.st_mode & 0o077:
        raise UntrustedFile(path, f"open to other users (mode {info.st_mode & 0o777:o})")


def is_private_dir(path: str) -> bool:
    try:
        check_private_dir(path)
    except OSError:
        return False
    return True


def private_dir(path: str) -> str:
    """``path`` as a private folder: made 0700 if missing (its parent must exist);
    one of this user's own folders open to others (as older versions left some) is
    closed to 0700; anything else raises as ``check_private_dir`` does."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        info = os.lstat(path)
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and info.st_mode & 0o077:
            os.chmod(path, 0o700)
    check_private_dir(path)
    return path


def make_fifo(path: str) -> None:
    """A FIFO at ``path`` (0600) unless one of ours is there already."""
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        info = os.lstat(path)
        if not stat.S_ISFIFO(info.st_mode):
            raise UntrustedFile(path, "not a FIFO") from None
        _check_owner(info, path)


def open_fifo(path: str, flags: int) -> int:
    """This user's FIFO ``path``, opened without following a symlink or blocking."""
    fd = os.open(path, flags | _SAFE)
    try:
        info = os.fstat(fd)
        if not stat.S_ISFIFO(info.st_mode):
            raise UntrustedFile(path, "not a FIFO")
        _check_owner(info, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with control characters (terminal escape sequences among them) shown
    as escapes, so text from a file can be printed as it is and do nothing else.
    ``newlines``: keep line breaks and tabs (source code)."""
    if text.isprintable():
        return text
    keep = "\n\t" if newlines else ""
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def map_private(path: str, size: int, *, writable: bool) -> mmap.mmap:
    """A shared mapping of ``size`` bytes of this user's file ``path`` (created when
    ``writable``). Stores into it are plain memory writes that survive the process's
    SIGKILL: the page cache keeps them."""
    fd = open_private(path, os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY)
    try:
        if writable and os.fstat(fd).st_size < size:
            # Real blocks, not a sparse file: a store into a page the filesystem
            # cannot back (a full disk) would kill the kernel with SIGBUS.
            os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
    finally:
        os.close(fd)
