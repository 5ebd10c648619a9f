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

from typing import Any

_agent: Any = None


def load_ipython_extension(ipython: Any) -> None:
    global _agent
    if _agent is not None:
        return
    from .recorder import Agent

    _agent = Agent.start(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    global _agent
    if _agent is not None:
        _agent.stop()
        _agent = None
