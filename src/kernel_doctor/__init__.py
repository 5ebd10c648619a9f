"""kernel-doctor: every Jupyter kernel death explained.

This module stays import-light: the supervisor imports it on every kernel start,
and ``%load_ext kernel_doctor`` loads the in-kernel agent through it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext kernel_doctor``: load the in-kernel agent."""
    from .agent import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .agent import unload_ipython_extension as unload

    unload(ipython)
