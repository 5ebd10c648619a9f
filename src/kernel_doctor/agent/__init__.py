"""The in-kernel agent: an IPython extension the supervisor loads into Python kernels.

It depends on nothing but the standard library and IPython, and imports only
relatively, because the supervisor may load it by path into a kernel whose Python
does not have kernel-doctor installed (see ``_boot``).

What it does, all of it cheap enough to be invisible per cell:

* a flight record of which cell starts and ends (``cells.jsonl``);
* faulthandler aimed at the session's files: fatal signals, and on-demand dumps on
  the supervisor's dump signal, which work even inside a long C call;
* a watcher thread that, while a cell runs, notes the running cell's current line
  and innermost frame in the shared state file, because faulthandler prints only
  the 100 innermost frames and deep recursion hides the cell's own frame.
"""

from __future__ import annotations

import sys
from typing import Any

_agent: Any = None


def running_agent() -> Any:
    """The agent this process runs, under either name: the supervisor loads it as
    'kernel_doctor_agent', ``%load_ext kernel_doctor`` as 'kernel_doctor.agent'."""
    for name in ("kernel_doctor_agent", "kernel_doctor.agent"):
        agent = getattr(sys.modules.get(name), "_agent", None)
        if agent is not None:
            return agent
    return None


def load_ipython_extension(ipython: Any) -> None:
    global _agent
    if running_agent() is not None:
        return  # one agent a kernel: a second would record every cell twice
    from .recorder import Agent

    try:
        _agent = Agent.start(ipython)
    except OSError as exc:  # e.g. a full disk: the kernel runs on without the agent
        out = sys.__stderr__ or sys.stderr
        out.write(f"kernel-doctor: the agent is off ({exc.strerror or exc})\n")


def unload_ipython_extension(ipython: Any) -> None:
    global _agent
    if _agent is not None:
        _agent.stop()
        _agent = None
