"""Loads kernel-doctor's agent into a kernel whose Python may lack kernel-doctor.

The supervisor puts this file's directory on the kernel's PYTHONPATH (a directory
holding nothing else, so nothing of kernel-doctor's environment leaks into the
kernel's) and asks IPython to load this module as an extension. It loads the agent
package from its parent directory under a private name.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

_NAME = "kernel_doctor_agent"


def load_ipython_extension(ipython: Any) -> None:
    module = sys.modules.get(_NAME)
    if module is None:
        package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        spec = importlib.util.spec_from_file_location(
            _NAME,
            os.path.join(package_dir, "__init__.py"),
            submodule_search_locations=[package_dir],
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"kernel-doctor's agent is not at {package_dir}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module
        spec.loader.exec_module(module)
    module.load_ipython_extension(ipython)
