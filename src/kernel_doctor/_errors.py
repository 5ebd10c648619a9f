"""Exceptions and exit codes.

Exception tree::

    KernelDoctorError            anything kernel-doctor reports to the user
    └── CommandError             a CLI failure; carries the exit code to end with
        ├── UsageError           bad arguments or input (exit 2)
        └── CgroupUnavailable    no way to make a memory cgroup here (exit 2)

The CLI maps these to exit codes in one place (``commands.main``); every message
is one line that says what happened and what to do about it.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit statuses of ``kernel-doctor run`` (documented in README)."""

    OK = 0
    CELL_ERROR = 1
    USAGE = 2
    KERNEL_DIED = 3
    TIMEOUT = 4


class KernelDoctorError(Exception):
    """Base of every error kernel-doctor reports to the user."""


class CommandError(KernelDoctorError):
    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CommandError):
    """Bad command-line arguments or bad input files."""


class CgroupUnavailable(CommandError):
    """A memory cgroup was asked for and none can be made here."""
