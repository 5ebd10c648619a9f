"""A papermill engine: ``papermill --engine kernel-doctor in.ipynb out.ipynb``.

papermill's own engine marks a cell whose kernel died ``completed``, and the output
notebook looks like a success. This one runs the kernel under the supervisor; when it
dies, the killed cell is marked failed in the output notebook with the diagnosis as its
error output, and papermill's ``DeadKernelError`` goes on up (its CLI then exits 138
whatever the engine does: ``kernel-doctor run`` has exit codes of its own).

As ``kernel-doctor run --checkpoint`` / ``--resume`` (``resume.py``): engine options
``kernel_doctor_checkpoint=True`` / ``kernel_doctor_resume=True`` of
``papermill.execute_notebook``, or, papermill's CLI passing no engine options,
``KERNEL_DOCTOR_CHECKPOINT=always`` / ``KERNEL_DOCTOR_RESUME=1`` in its environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from typing import Any

from nbclient.exceptions import CellExecutionError, DeadKernelError
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine
from papermill.utils import merge_kwargs, remove_args

from .batch import death_report, mark_cell_failed, name_frames, wait_for_supervisor
from .launch import SupervisedKernelManager

ENV_RESUME = "KERNEL_DOCTOR_RESUME"
logger = logging.getLogger("papermill")


class _Client(PapermillNotebookClient):  # type: ignore[misc]
    """papermill's client, restoring an earlier run's checkpoint first (``--resume``)
    and skipping the cells it covers."""

    resume_path: str | None = None

    def papermill_execute_cells(self) -> None:
        from .resume import resume

        def log(text: str, style: str = "") -> None:
            logger.info(f"kernel-doctor: {text}")

        done = (
            resume(self.kc, self.nb, self.resume_path, self.timeout, log)
            if self.resume_path
            else -1
        )
        for index, cell in enumerate(self.nb.cells):
            if index <= done:
                continue  # run before the death: its state restored, its outputs as they are
            try:
                self.nb_man.cell_start(cell, index)
                self.execute_cell(cell, index)
            except CellExecutionError as ex:
                self.nb_man.cell_exception(self.nb.cells[index], cell_index=index, exception=ex)
                break
            finally:
                self.nb_man.cell_complete(self.nb.cells[index], cell_index=index)


class KernelDoctorEngine(NBClientEngine):  # type: ignore[misc]
    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        log_output: bool = False,
        stdout_file: Any = None,
        stderr_file: Any = None,
        start_timeout: int = 60,
        execution_timeout: float | None = None,
        kernel_doctor_checkpoint: bool = False,
        kernel_doctor_resume: bool = False,
        **kwargs: Any,
    ) -> Any:
        from .paths import new_session_dir
        from .resume import notebook_env

        path = kwargs.get("input_path")
        resume = kernel_doctor_resume or os.environ.get(ENV_RESUME, "") not in ("", "0")

        try:
            session_dir = new_session_dir("papermill")
        except OSError as exc:  # fail open: the notebook runs, unsupervised
            sys.stderr.write(
                f"kernel-doctor: cannot make a private folder for evidence ({exc}); "
                "running the notebook unsupervised\n"
            )
            return super().execute_managed_notebook(
                nb_man,
                kernel_name,
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
                start_timeout=start_timeout,
                execution_timeout=execution_timeout,
                **kwargs,
            )
        env = notebook_env(path, kernel_doctor_checkpoint or resume) if path else {}
        km = SupervisedKernelManager(
            kernel_name=kernel_name,
            supervisor_options={"session": session_dir, "quiet": "1"},
            kernel_env=env,
        )
        try:
            final = merge_kwargs(
                remove_args(["input_path", "timeout", "startup_timeout"], **kwargs),
                timeout=execution_timeout or kwargs.get("timeout"),
                startup_timeout=start_timeout,
                kernel_name=kernel_name,
                log=logger,
                log_output=log_output,
                stdout_file=stdout_file,
                stderr_file=stderr_file,
            )  # as NBClientEngine's (papermill 2.x), with our client
            client = _Client(nb_man, km=km, **final)
            client.resume_path = path if resume else None
            return client.execute()
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
