"""Where kernel-doctor keeps its files: private folders in the Jupyter runtime dir.

::

    <runtime dir>/                 jupyter's, 0700 (made so if kernel-doctor makes it)
    └── kernel-doctor/             0700, this user's (``kernel-doctor-<uid>`` when the
        │                          runtime dir is shared: see ``runtime_dir``)
        ├── sessions/<name>/       one supervised kernel's evidence, 0700
        └── reports/<id>.json      stored death reports, 0600

Every folder is checked before use (this user's, 0700, not a symlink: see
``agent.private``); one that fails the check is refused with a ``PermissionError``
whose message names the folder and why, never used.
"""

from __future__ import annotations

import os
import stat
import time

from .agent.private import private_dir

SESSIONS = "sessions"
REPORTS = "reports"


def jupyter_runtime_dir() -> str:
    base = os.environ.get("JUPYTER_RUNTIME_DIR")
    if base:
        return base
    from jupyter_core.paths import jupyter_runtime_dir as find  # ~5 ms: only when needed

    return find()


def runtime_dir(create: bool = True) -> str:
    """kernel-doctor's private folder in the Jupyter runtime dir.

    The runtime dir is made 0700 if missing, as jupyter_core makes it (it holds the
    server's token files). If it is not this user's private folder (a
    ``JUPYTER_RUNTIME_DIR`` on a shared 1777 folder), a folder named after the user is
    used, so no other user can have made it first without being noticed."""
    base = jupyter_runtime_dir()
    if create and not os.path.isdir(base):
        os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
        try:
            os.mkdir(base, 0o700)
        except FileExistsError:
            pass
    try:
        info = os.lstat(base)
    except OSError:  # missing or unreachable: making our folder there says why
        return os.path.join(base, "kernel-doctor")
    shared_sticky = info.st_mode & stat.S_ISVTX and info.st_mode & 0o022
    if stat.S_ISDIR(info.st_mode) and shared_sticky:
        # A shared runtime dir like /tmp (whoever owns it): nobody can rename what is
        # ours in it, so a folder named after this user is safe once checked.
        path = os.path.join(base, f"kernel-doctor-{os.geteuid()}")
    elif stat.S_ISDIR(info.st_mode) and info.st_uid != os.geteuid():
        # Someone else's folder without the sticky bit: they (or their group) could
        # rename our folder and put theirs in its place after we checked it. Keep to
        # the private folder in the temp dir instead.
        path = _temp_dir()
    else:
        # The user's own runtime dir (or not a folder at all, which fails below with
        # the error that says so). kernel-doctor 0.1 made it 0755 (0775 under a umask
        # of 002), exposing the server's token files: make it 0700 again, as
        # jupyter_core would have.
        if create and stat.S_ISDIR(info.st_mode) and info.st_mode & 0o077:
            os.chmod(base, 0o700)
        path = os.path.join(base, "kernel-doctor")
    if create:
        private_dir(path)
    return path


def sessions_dir(create: bool = True) -> str:
    path = os.path.join(runtime_dir(create), SESSIONS)
    if create:
        private_dir(path)
    return path


def reports_dir(create: bool = False) -> str:
    path = os.path.join(runtime_dir(create), REPORTS)
    if create:
        private_dir(path)
    return path


def _temp_dir() -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"kernel-doctor-{os.geteuid()}")


def fallback_sessions_dir() -> str:
    """Where evidence goes when the runtime dir cannot be written: a private folder
    in the temp dir, refused if someone else made it first."""
    return private_dir(os.path.join(private_dir(_temp_dir()), SESSIONS))


def new_session_dir(kind: str = "") -> str:
    """A new private session folder for a caller's own run (``kernel-doctor run``,
    the papermill engine): named ``<kind>-<pid>-<ms>``, made 0700. Where the runtime
    dir cannot be used, in the temp-dir fallback; ``OSError`` if neither can."""
    name = f"{kind}-{os.getpid()}-{int(time.time() * 1000)}"
    try:
        return private_dir(os.path.join(sessions_dir(), name))
    except OSError:
        return private_dir(os.path.join(fallback_sessions_dir(), name))


def session_roots() -> list[str]:
    """Every folder this user's sessions may be in (without making any)."""
    roots = []
    try:
        roots.append(sessions_dir(create=False))
    except OSError:
        pass
    fallback = os.path.join(_temp_dir(), SESSIONS)
    return roots if fallback in roots else [*roots, fallback]
