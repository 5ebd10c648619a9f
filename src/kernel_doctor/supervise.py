"""``python -m kernel_doctor.supervise [OPTIONS] -- KERNEL_ARGV…``: the kernelspec wrapper.

This entry point fails open: if supervision cannot start for any reason (an
unsupported OS, /proc unreadable, a broken install, KERNEL_DOCTOR_DISABLE=1) it
replaces itself with the plain kernel, after one warning line on stderr when the
reason is not the user's own choice. It imports as little as it can before the
kernel is started; see ``supervisor`` for the process model.
"""

from __future__ import annotations

import os
import sys

USAGE = (
    "usage: python -m kernel_doctor.supervise [--session DIR] [--cgroup DIR] [--report PATH] "
    "[--kernel-name NAME] [--guard 90%|SIZE|off] [--quiet] -- KERNEL_ARGV..."
)


def split_argv(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(supervisor options, kernel argv) from ``[--opt value]… -- kernel argv…``."""
    if "--" not in argv:
        raise ValueError("no '--' before the kernel's command line")
    cut = argv.index("--")
    head, kernel = argv[:cut], argv[cut + 1 :]
    if not kernel:
        raise ValueError("no kernel command line after '--'")
    options: dict[str, str] = {}
    known = ("--session", "--cgroup", "--report", "--kernel-name", "--guard")
    i = 0
    while i < len(head):
        name = head[i]
        if name == "--quiet":  # no diagnosis on stderr: the caller shows it itself
            options["quiet"] = "1"
            i += 1
            continue
        if name not in known or i + 1 >= len(head):
            raise ValueError(f"unknown supervisor option {name!r}")
        options[name[2:]] = head[i + 1]
        i += 2
    return options, kernel


def _plain(kernel: list[str], warning: str | None) -> int:
    if warning:
        sys.stderr.write(f"kernel-doctor: {warning}; starting the kernel unsupervised\n")
        sys.stderr.flush()
    try:
        os.execvp(kernel[0], kernel)
    except OSError as exc:
        sys.stderr.write(f"kernel-doctor: cannot start the kernel {kernel[0]!r}: {exc}\n")
        return 127


def main(argv: list[str]) -> int:
    try:
        options, kernel = split_argv(argv)
    except ValueError as exc:
        sys.stderr.write(f"kernel-doctor: {exc}\n{USAGE}\n")
        return 2
    if os.environ.get("KERNEL_DOCTOR_DISABLE", "") not in ("", "0"):
        return _plain(kernel, None)
    if not sys.platform.startswith("linux"):
        return _plain(kernel, f"supervision needs Linux (this is {sys.platform})")
    if not os.path.exists("/proc/self/status"):
        return _plain(kernel, "/proc is not readable")
    try:
        from .supervisor.process import SupervisionUnavailable, Supervisor
    except Exception as exc:  # a broken or half-removed install must not stop the kernel
        return _plain(kernel, f"cannot load the supervisor ({type(exc).__name__}: {exc})")
    try:
        supervisor = Supervisor(kernel, options)
    except SupervisionUnavailable as exc:
        return _plain(kernel, str(exc))
    except Exception as exc:  # e.g. jupyter_core missing: never the reason a kernel won't run
        return _plain(kernel, f"cannot start supervision ({type(exc).__name__}: {exc})")
    try:
        return supervisor.run()
    except SupervisionUnavailable as exc:
        return _plain(kernel, str(exc))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
