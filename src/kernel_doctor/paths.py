"""Where kernel-doctor keeps its files: a private folder in the Jupyter data dir.

::

    <data dir>/                    jupyter's (``jupyter --data-dir``)
    └── kernel-doctor/             0700, this user's (``kernel-doctor-<uid>`` when the
        │                          data dir is shared: see ``state_dir``)
        ├── sessions/<name>/       one supervised kernel's evidence, 0700
        └── reports/<id>.json      stored death reports, 0600

Not the runtime dir: that one holds what Jupyter itself puts there (connection files,
the server's token files), and tools and tests read it as exactly that (jupyter_client's
own ``test_kernelapp_lifecycle`` expects one file in it after ``jupyter kernel``).
Reports must outlive restarts, which the data dir is for. Reports that earlier versions
kept in the runtime dir are moved over on first use (``_adopt_old_reports``).

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
FOLDER = "kernel-doctor"


def jupyter_data_dir() -> str:
    base = os.environ.get("JUPYTER_DATA_DIR")
    if base:
        return base
    from jupyter_core.paths import jupyter_data_dir as find  # ~5 ms: only when needed

    return find()


def state_dir(create: bool = True) -> str:
    """kernel-doctor's private folder in the Jupyter data dir.

    If the data dir is not this user's own folder (a ``JUPYTER_DATA_DIR`` on a shared
    1777 folder), a folder named after the user is used, so no other user can have
    made it first without being noticed."""
    base = jupyter_data_dir()
    if create and not os.path.isdir(base):
        os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
        try:  # as private as what kernel-doctor keeps in it; jupyter never needs more
            os.mkdir(base, 0o700)
        except FileExistsError:
            pass
    try:
        info = os.lstat(base)
    except OSError:  # missing or unreachable: making our folder there says why
        return os.path.join(base, FOLDER)
    shared_sticky = info.st_mode & stat.S_ISVTX and info.st_mode & 0o022
    if stat.S_ISDIR(info.st_mode) and shared_sticky:
        # A shared data dir like /tmp (whoever owns it): nobody can rename what is
        # ours in it, so a folder named after this user is safe once checked.
        path = os.path.join(base, f"{FOLDER}-{os.geteuid()}")
    elif stat.S_ISDIR(info.st_mode) and info.st_uid != os.geteuid():
        # Someone else's folder without the sticky bit: they (or their group) could
        # rename our folder and put theirs in its place after we checked it. Keep to
        # the private folder in the temp dir instead.
        path = _temp_dir()
    else:
        # The user's own data dir (or not a folder at all, which fails below with the
        # error that says so).
        path = os.path.join(base, FOLDER)
    if create:
        private_dir(path)
        _adopt_old_reports(path)
    return path


def _adopt_old_reports(path: str) -> None:
    """Reports that earlier versions kept in ``<runtime dir>/kernel-doctor`` move to
    ``path`` (one rename, same filesystem by default), so no report is lost; the old
    folder goes once empty. Only the user's own old folder is touched, and only while
    ``path`` holds no reports yet. Earlier versions also left the runtime dir 0755 (it holds
    the server's token files): closed here too."""
    base = os.environ.get("JUPYTER_RUNTIME_DIR")
    if not base:
        from jupyter_core.paths import jupyter_runtime_dir

        base = jupyter_runtime_dir()
    old = os.path.join(base, FOLDER)
    try:
        info = os.lstat(old)
        runtime = os.lstat(base)
    except OSError:
        return  # the common case: nothing there
    mine = os.geteuid()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != mine or old == path:
        return
    if stat.S_ISDIR(runtime.st_mode) and runtime.st_uid == mine and runtime.st_mode & 0o077:
        os.chmod(base, 0o700)
    try:
        if not os.path.lexists(os.path.join(path, REPORTS)):
            os.rename(os.path.join(old, REPORTS), os.path.join(path, REPORTS))
        os.rmdir(os.path.join(old, SESSIONS))
        os.rmdir(old)
    except OSError:
        pass  # another filesystem, live sessions of an older supervisor: left as they are


def sessions_dir(create: bool = True) -> str:
    path = os.path.join(state_dir(create), SESSIONS)
    if create:
        private_dir(path)
    return path


def reports_dir(create: bool = False) -> str:
    path = os.path.join(state_dir(create), REPORTS)
    if create:
        private_dir(path)
    return path


def _temp_dir() -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"{FOLDER}-{os.geteuid()}")


def fallback_sessions_dir() -> str:
    """Where evidence goes when the data dir cannot be written: a private folder
    in the temp dir, refused if someone else made it first."""
    return private_dir(os.path.join(private_dir(_temp_dir()), SESSIONS))


def new_session_dir(kind: str = "") -> str:
    """A new private session folder for a caller's own run (``kernel-doctor run``,
    the papermill engine): named ``<kind>-<pid>-<ms>``, made 0700. Where the data
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
