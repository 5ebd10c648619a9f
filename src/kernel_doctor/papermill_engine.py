"""A papermill engine: ``papermill --engine kernel-doctor in.ipynb out.ipynb``.

papermill's own engine marks a cell whose kernel died ``completed``, and the output
notebook looks like a success. This one runs the kernel under the supervisor; when it
dies, the killed cell is marked failed in the output notebook with the diagnosis as its
error output, and papermill's ``DeadKernelError`` goes on up (its CLI then exits 138
whatever the engine does: ``kernel-doctor run`` has exit codes of its own).
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

from nbclient.exceptions import DeadKernelError
from papermill.engines import NBClientEngine

from .batch import death_report, mark_cell_failed, name_frames, wait_for_supervisor
from .launch import SupervisedKernelManager


class KernelDoctorEngine(NBClientEngine):  # type: ignore[misc]
    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        from .paths import new_session_dir

        try:
            session_dir = new_session_dir("papermill")
        except OSError as exc:  # fail open: the notebook runs, unsupervised
            sys.stderr.write(
                f"kernel-doctor: cannot make a private folder for evidence ({exc}); "
                "running the notebook unsupervised\n"
            )
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
        km = SupervisedKernelManager(
            kernel_name=kernel_name,
            supervisor_options={"session": session_dir, "quiet": "1"},
        )
        try:
            return super().execute_managed_notebook(nb_man, kernel_name, km=km, **kwargs)
        except DeadKernelError:
            wait_for_supervisor(km)
            index = _running_cell(nb_man.nb)
            report = death_report(nb_man.nb, index, session_dir)
            name_frames(report, nb_man.nb, session_dir)
            if index is not None:
                cell = nb_man.nb.cells[index]
                mark_cell_failed(cell, report)
                nb_man.cell_exception(cell, cell_index=index)
            raise
        finally:
            _shut_down(km)
            shutil.rmtree(session_dir, ignore_errors=True)


def _running_cell(nb: Any) -> int | None:
    """The cell that was running: the last one papermill started (it marks even the
    killed one "completed" on its way out)."""
    started = [
        index
        for index, cell in enumerate(nb.cells)
        if cell.get("metadata", {}).get("papermill", {}).get("start_time")
    ]
    return started[-1] if started else None


def _shut_down(km: SupervisedKernelManager) -> None:
    """papermill ends only kernel managers it made itself, as nbclient does."""
    from jupyter_core.utils import ensure_async, run_sync

    async def stop() -> None:
        if km.has_kernel:
            await ensure_async(km.shutdown_kernel(now=True))

    try:
        run_sync(stop)()
    except Exception:
        pass
