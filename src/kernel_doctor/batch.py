"""Run a notebook with nbclient under supervision and turn what happened into a report."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from ._errors import CommandError, ExitCode
from .agent.naming import capital, cell_files, cell_name, cell_place, short_paths
from .agent.private import append_private, read_private
from .agent.protocol import ENV_KERNEL_OUTPUT, read_cells, read_meta, read_samples, read_state
from .diagnosis.children import add_child_deaths
from .diagnosis.stacks import user_frames
from .evidence import Frame
from .launch import SupervisedKernelManager, ipc_transport
from .probe.create import LimitedCgroup
from .reports.model import empty_report
from .reports.store import REPORT_FILE
from .resume import notebook_env, resume
from .sizes import format_size
from .timeouts import look_at_timeout

AGENT_DIR = os.path.join(os.path.dirname(__file__), "agent")
# How long to wait for the supervisor to finish its report after nbclient saw the
# kernel die. The supervisor exits only after writing it, so this is a ceiling.
REPORT_WAIT = 10.0
# The kernel's own stdout and stderr (ipykernel's log lines, a C library's messages)
# go here, not to run's: its stderr is the progress, the supervisor's warnings and the
# result. The supervisor keeps the stderr tail in its report; this file is for a
# death it did not report.
KERNEL_OUTPUT = "kernel-output.log"


class _Client(NotebookClient):
    """nbclient's client, telling ``progress`` which cell the kernel started: the
    execute_input message carries the execution count JupyterLab would show."""

    progress: Any = None  # (cell index, execution count) -> None

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        if msg.get("msg_type") == "execute_input" and self.progress is not None:
            count = msg.get("content", {}).get("execution_count")
            self.progress(cell_index, count if isinstance(count, int) else None)
        return super().process_message(msg, cell, cell_index)


@dataclass
class BatchResult:
    outcome: str
    exit_code: ExitCode
    report: dict[str, Any]
    notebook: Any
    failed_index: int | None = None


def run_notebook(nb: Any, *, cgroup: LimitedCgroup | None, **kwargs: Any) -> BatchResult:
    """Execute ``nb`` (see ``_execute`` for the arguments); whatever happens, the
    cgroup and the session's evidence are removed afterwards."""
    from .paths import new_session_dir

    # In the user's private data dir, never in a shared temp dir (see paths).
    try:
        session_dir = new_session_dir("run")
    except OSError as exc:
        if cgroup is not None:
            cgroup.remove()
        raise CommandError(
            f"cannot make a private folder for the run's evidence ({exc.strerror or exc}: "
            f"{exc.filename}); point JUPYTER_DATA_DIR at a folder of your own"
        ) from exc
    try:
        return _execute(nb, session_dir=session_dir, cgroup=cgroup, **kwargs)
    finally:
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(session_dir, ignore_errors=True)
        # nbclient leaves the sockets of a finished kernel's channels unclosed; collect
        # them now, quietly, rather than warn at some later garbage collection.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


def _execute(
    nb: Any,
    *,
    kernel_name: str,
    cwd: str,
    timeout: float | None,
    cgroup: LimitedCgroup | None,
    allow_errors: bool,
    start_timeout: float | None = None,
    log: Any = None,
    guard: str | None = None,
    session_dir: str,
    notebook_path: str | None = None,
    resume_run: bool = False,
    checkpoint: bool = False,
) -> BatchResult:
    options = {"session": session_dir, "quiet": "1"}
    if guard is not None:
        options["guard"] = guard
    if cgroup is not None and cgroup.path:
        options["cgroup"] = cgroup.path
    km = SupervisedKernelManager(
        kernel_name=kernel_name,
        supervisor_options=options,
        command_prefix=list(cgroup.command_prefix) if cgroup else [],
    )
    argv = km.kernel_spec.argv if km.kernel_spec is not None else []
    for name, value in ipc_transport(session_dir, argv).items():
        setattr(km, name, value)  # before the connection file is written, at the start
    client = _Client(
        nb,
        km=km,
        # nbclient takes whole seconds; round up so a short timeout never becomes none.
        timeout=math.ceil(timeout) if timeout else None,
        **({"startup_timeout": math.ceil(start_timeout)} if start_timeout else {}),
        allow_errors=allow_errors,
        kernel_name=kernel_name,
        resources={"metadata": {"path": cwd}},
        raise_on_iopub_timeout=False,
    )
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if log:
        client.progress = lambda index, count: log(
            f"[{code_cells.index(index) + 1}/{len(code_cells)}] {cell_name(count, index)}"
        )
    current: int | None = None
    outcome, code = "ok", ExitCode.OK
    first_error: int | None = None
    output_path = os.path.join(session_dir, KERNEL_OUTPUT)
    output = append_private(output_path)
    env = {**os.environ, ENV_KERNEL_OUTPUT: output_path}  # the kernel's stderr, to the log
    if notebook_path:
        env.update(notebook_env(notebook_path, checkpoint or resume_run))  # for --resume
    try:
        with client.setup_kernel(stdout=output, env=env):
            assert client.kc is not None
            info = client.wait_for_reply(client.kc.kernel_info())
            if info is not None:
                client.nb.metadata["language_info"] = info["content"]["language_info"]
            done = resume(client.kc, nb, notebook_path, timeout, log) if resume_run else -1
            for index in code_cells:
                if index <= done:
                    continue  # run before the death, its state restored
                current = index
                cell = nb.cells[index]
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError:
                    outcome, code = "cell_error", ExitCode.CELL_ERROR
                    first_error = index
                    break
                if allow_errors and first_error is None and _has_error(cell):
                    first_error = index
            else:
                current = None
            if outcome == "ok" and first_error is not None:
                outcome, code = "cell_error", ExitCode.CELL_ERROR
            if outcome == "cell_error":
                report = _cell_error_report(nb, first_error, session_dir)
            else:
                report = empty_report("ok", "The notebook ran to the end.")
    except DeadKernelError:
        outcome, code = "kernel_died", ExitCode.KERNEL_DIED
        wait_for_supervisor(km)
        report = death_report(nb, current, session_dir)
    except RuntimeError as exc:
        # nbclient's "Kernel died before replying to kernel_info": a start-up failure.
        outcome, code = "kernel_died", ExitCode.KERNEL_DIED
        current = None
        wait_for_supervisor(km)
        report = death_report(nb, None, session_dir)
        if report.get("cause") == "unknown":
            report["summary"] = f"The kernel did not start: {exc}"
            if "didn't respond" in str(exc):  # nbclient's start-up timeout, alive still
                report["summary"] += "; on a slow machine, give it longer with --start-timeout"
    except CellTimeoutError:
        outcome, code = "timeout", ExitCode.TIMEOUT
        report = _timeout_report(nb, current, timeout, session_dir)
        look_at_timeout(report, km, session_dir, current)
    finally:
        # nbclient shuts down only kernels it started itself, and ours came with our
        # KernelManager: end it here, or it outlives the run (a timed-out cell keeps
        # spinning) until our own process exits.
        _shut_down(client, now=outcome not in ("ok", "cell_error"))
        os.close(output)
    if outcome in ("ok", "cell_error"):
        # A worker of the kernel died (the kernel lived): the run failed all the same.
        by_count = {c.get("execution_count"): i for i, c in enumerate(nb.cells)}
        died = add_child_deaths(report, session_dir, lambda n: by_count.get(n))
        if died is not None:
            outcome, code = "child_died", ExitCode.CELL_ERROR
            if first_error is None:
                first_error = died[1]
    _add_memory(report, session_dir)
    name_frames(report, nb, session_dir)
    failed = current if outcome in ("kernel_died", "timeout") else first_error
    if outcome == "kernel_died" and failed is not None:
        mark_cell_failed(nb.cells[failed], report)
    elif outcome == "child_died" and failed is not None and not _has_error(nb.cells[failed]):
        mark_cell_failed(nb.cells[failed], report, "WorkerDied")
    return BatchResult(outcome, code, report, nb, failed)


def _has_error(cell: Any) -> bool:
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))


def _shut_down(client: NotebookClient, now: bool) -> None:
    """A healthy kernel gets jupyter_client's shutdown request (no report: it was asked
    to end); a timed-out or dead one is ended at once. nbclient's own clean-up, which
    it runs only for kernel managers it made itself."""
    client.shutdown_kernel = "immediate" if now else "graceful"
    with contextlib.suppress(Exception):
        if client.km is not None:
            client._cleanup_kernel()


def wait_for_supervisor(km: SupervisedKernelManager) -> None:
    process = getattr(km.provisioner, "process", None)
    if process is None:
        return
    deadline = time.monotonic() + REPORT_WAIT
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def _cell_json(nb: Any, index: int | None, execution_count: int | None = None) -> Any:
    if index is None:
        return None
    cell = nb.cells[index]
    count = cell.get("execution_count")
    return {
        "index": index,
        "execution_count": count if count is not None else execution_count,
        "id": cell.get("id"),
        "source": cell.source,
    }


def death_report(nb: Any, index: int | None, session_dir: str) -> dict[str, Any]:
    """The supervisor's report of the death, with the notebook's cell (``index``)."""
    report = _load(os.path.join(session_dir, REPORT_FILE))
    if report is None:
        report = empty_report("kernel_died", "The kernel died, and its supervisor left no report.")
        report["cause"] = "unknown"
        output = read_private(os.path.join(session_dir, KERNEL_OUTPUT)) or b""
        report["stderr_tail"] = output[-8000:].decode(errors="replace")
    report["outcome"] = "kernel_died"
    running_count = (report.get("cell") or {}).get("execution_count")
    if index is not None:
        report["cell"] = _cell_json(nb, index, running_count)
    return report


def name_frames(report: dict[str, Any], nb: Any, session_dir: str) -> None:
    """Give each stack frame in a cell's code file its cell: the execution count (from
    the agent's flight record) and the notebook position (from the count)."""
    files = cell_files(read_cells(session_dir))
    positions = {
        cell["execution_count"]: i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and isinstance(cell.get("execution_count"), int)
    }
    for frame in report.get("stack") or []:
        if frame.get("execution_count") is None:
            frame["execution_count"] = files.get(str(frame.get("file")))
        if frame.get("cell_index") is None:
            frame["cell_index"] = positions.get(frame["execution_count"])


def _cell_error_report(nb: Any, index: int | None, session_dir: str) -> dict[str, Any]:
    ended = [r.error for r in read_cells(session_dir) if r.event == "end" and r.error]
    error = ended[-1] if ended else {}
    report = empty_report("cell_error", "")
    report["cell"] = _cell_json(nb, index)
    report["line"] = error.get("line")
    name = error.get("type") or "an exception"
    message = error.get("message") or ""
    count = (report["cell"] or {}).get("execution_count")
    where = capital(cell_place(count, index, report["line"]))
    report["summary"] = (
        f"{where} raised {name}: {message}".rstrip(": ")
        + ". The kernel is alive: this is an error in the cell, not a kernel death."
    )
    frames = [Frame(str(f), int(ln), str(fn)) for f, ln, fn in error.get("stack", [])]
    report["stack"] = [
        {
            "file": f.file,
            "line": f.line,
            "function": f.function,
            "cell_index": None,
            "execution_count": None,
        }
        # From the cell inwards, without the agent's own guard handler.
        for f in user_frames(tuple(frames))
        if not f.file.startswith(AGENT_DIR)
    ]
    guard = error.get("guard")
    if isinstance(guard, dict):  # the memory guard stopped the cell; the kernel lives
        report["guard"] = {
            "tripped": True,
            "layer": guard.get("layer"),
            "usage_bytes": guard.get("usage_bytes"),
            "limit_bytes": guard.get("limit_bytes"),
        }
        if guard.get("layer") == "allocation":
            request = guard.get("request_bytes")
            what = f" of {format_size(request)}" if request else ""
            usage, limit = guard.get("usage_bytes"), guard.get("limit_bytes")
            left = format_size(max(0, limit - usage)) if limit and usage is not None else "?"
            report["summary"] = (
                f"{where}: the memory guard refused an allocation"
                f"{what}, since the {format_size(limit)} limit leaves {left}. The kernel "
                "is alive, with its variables."
            )
        else:
            report["summary"] = (
                f"{where} was stopped by the memory guard: "
                f"{format_size(guard.get('usage_bytes'))} of the "
                f"{format_size(guard.get('limit_bytes'))} limit. The kernel is alive, with "
                "its variables."
            )
    return report


def _timeout_report(
    nb: Any, index: int | None, timeout: float | None, session_dir: str
) -> dict[str, Any]:
    report = empty_report("timeout", "")
    report["cell"] = _cell_json(nb, index)
    state = read_state(session_dir)
    line = state.line if state is not None and state.busy else None
    report["line"] = line
    count = (report["cell"] or {}).get("execution_count")
    where = capital(cell_place(count, index, line))
    report["summary"] = f"{where} ran longer than the {timeout:g} s timeout."
    frame = state.frame if state is not None else None
    if frame is not None:
        report["stack"] = [
            {
                "file": frame[0],
                "line": frame[1],
                "function": frame[2],
                "cell_index": None,
                "execution_count": None,
            }
        ]
    return report


def _add_memory(report: dict[str, Any], session_dir: str) -> None:
    memory = report.setdefault("memory", {})
    if memory.get("limit_bytes") is not None:
        return
    meta = read_meta(session_dir)
    limit = meta.limit if meta is not None else None
    guard = meta.guard if meta is not None else None
    samples = read_samples(session_dir)
    from .supervisor.collect import downsample

    # As a death report has them: for the chart's threshold line and In [N] marks.
    starts = []
    if meta is not None:
        started = meta.started
        records = read_cells(session_dir)
        starts = [
            [round(r.t - started, 3), r.execution_count] for r in records if r.event == "start"
        ]

    memory.update(
        {
            "peak_bytes": max((c for _, c, _ in samples), default=None),
            "kernel_peak_bytes": max((k for _, _, k in samples), default=None),
            "limit_bytes": limit.limit_bytes if limit else None,
            "limit_source": limit.source if limit else None,
            "limit_kind": limit.kind if limit else None,
            "timeline": [list(p) for p in downsample([(t, c) for t, c, _ in samples], 500)],
            "threshold_bytes": guard.threshold_bytes if guard and guard.enabled else None,
            "cell_starts": starts,
        }
    )


def mark_cell_failed(cell: Any, report: dict[str, Any], ename: str = "KernelDied") -> None:
    """The killed cell's error output: what happened and what to do; the evidence is
    one command away (the notebook is read by people, the report by both)."""
    lines = [report.get("summary") or "The kernel died."]
    lines += [f"  → {short_paths(tip)}" for tip in report.get("advice", [])]
    if report.get("id"):
        lines.append(f"The evidence: kernel-doctor show {report['id']} --verbose")
    cell.setdefault("outputs", []).append(
        nbformat.v4.new_output(
            "error",
            ename=ename,
            evalue=f"{report.get('cause')}: {report.get('summary')}",
            traceback=lines,
        )
    )


def _load(path: str) -> dict[str, Any] | None:
    import json

    try:
        value = json.loads(read_private(path) or b"null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def describe_limit(cgroup: LimitedCgroup | None) -> str:
    """The end of run's first line: "with a 300 MiB memory limit (a new memory cgroup)"."""
    if cgroup is None:
        return "under the memory limit that already applies"
    how = "a new memory cgroup" if cgroup.path else "a systemd scope"
    return f"with a {format_size(cgroup.limit_bytes)} memory limit ({how})"


__all__ = ["BatchResult", "describe_limit", "run_notebook"]
