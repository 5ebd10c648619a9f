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
from .agent.protocol import read_cells, read_meta, read_samples, read_state
from .diagnosis.stacks import user_frames
from .evidence import Frame
from .launch import SupervisedKernelManager
from .probe.create import LimitedCgroup
from .reports.model import empty_report
from .reports.store import REPORT_FILE
from .sizes import format_size
from .timeouts import look_at_timeout

AGENT_DIR = os.path.join(os.path.dirname(__file__), "agent")
# How long to wait for the supervisor to finish its report after nbclient saw the
# kernel die. The supervisor exits only after writing it, so this is a ceiling.
REPORT_WAIT = 10.0


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

    # In the user's private runtime dir, never in a shared temp dir (see paths).
    try:
        session_dir = new_session_dir("run")
    except OSError as exc:
        if cgroup is not None:
            cgroup.remove()
        raise CommandError(
            f"cannot make a private folder for the run's evidence ({exc.strerror or exc}: "
            f"{exc.filename}); point JUPYTER_RUNTIME_DIR at a folder of your own"
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
    log: Any = None,
    guard: str | None = None,
    session_dir: str,
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
    client = NotebookClient(
        nb,
        km=km,
        # nbclient takes whole seconds; round up so a short timeout never becomes none.
        timeout=math.ceil(timeout) if timeout else None,
        allow_errors=allow_errors,
        kernel_name=kernel_name,
        resources={"metadata": {"path": cwd}},
        raise_on_iopub_timeout=False,
    )
    index_of_count: dict[int, int] = {}
    current: int | None = None
    outcome, code = "ok", ExitCode.OK
    first_error: int | None = None
    try:
        with client.setup_kernel():
            assert client.kc is not None
            info = client.wait_for_reply(client.kc.kernel_info())
            if info is not None:
                client.nb.metadata["language_info"] = info["content"]["language_info"]
            code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
            for n, index in enumerate(code_cells, 1):
                current = index
                cell = nb.cells[index]
                if log:
                    log(f"[{n}/{len(code_cells)}] cell {index}")
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError:
                    outcome, code = "cell_error", ExitCode.CELL_ERROR
                    first_error = index
                    break
                if isinstance(cell.get("execution_count"), int):
                    index_of_count[cell["execution_count"]] = index
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
        report = death_report(nb, current, index_of_count, session_dir)
    except RuntimeError as exc:
        # nbclient's "Kernel died before replying to kernel_info": a start-up failure.
        outcome, code = "kernel_died", ExitCode.KERNEL_DIED
        current = None
        wait_for_supervisor(km)
        report = death_report(nb, None, index_of_count, session_dir)
        if report.get("cause") == "unknown":
            report["summary"] = f"The kernel did not start: {exc}"
    except CellTimeoutError:
        outcome, code = "timeout", ExitCode.TIMEOUT
        report = _timeout_report(nb, current, timeout, session_dir)
        look_at_timeout(report, km, session_dir, current)
    finally:
        # nbclient shuts down only kernels it started itself, and ours came with our
        # KernelManager: end it here, or it outlives the run (a timed-out cell keeps
        # spinning) until our own process exits.
        _shut_down(client, now=outcome not in ("ok", "cell_error"))
    _add_memory(report, session_dir)
    failed = current if outcome in ("kernel_died", "timeout") else first_error
    if outcome == "kernel_died" and failed is not None:
        mark_cell_failed(nb.cells[failed], report)
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


def death_report(
    nb: Any, index: int | None, index_of_count: dict[int, int], session_dir: str
) -> dict[str, Any]:
    report = _load(os.path.join(session_dir, REPORT_FILE))
    if report is None:
        report = empty_report("kernel_died", "The kernel died, and its supervisor left no report.")
        report["cause"] = "unknown"
    report["outcome"] = "kernel_died"
    running_count = (report.get("cell") or {}).get("execution_count")
    if index is not None:
        report["cell"] = _cell_json(nb, index, running_count)
        if running_count is not None:
            index_of_count[running_count] = index
    for frame in report.get("stack", []):
        frame["cell_index"] = index_of_count.get(frame.get("execution_count") or -1)
    if index is not None and running_count is not None and report.get("summary"):
        # The supervisor names cells by execution count; here we know the position too.
        report["summary"] = report["summary"].replace(
            f"cell [{running_count}]", f"cell {index} (In [{running_count}])"
        )
    return report


def _cell_error_report(nb: Any, index: int | None, session_dir: str) -> dict[str, Any]:
    ended = [r.error for r in read_cells(session_dir) if r.event == "end" and r.error]
    error = ended[-1] if ended else {}
    report = empty_report("cell_error", "")
    report["cell"] = _cell_json(nb, index)
    report["line"] = error.get("line")
    name = error.get("type") or "an exception"
    message = error.get("message") or ""
    line = f", line {report['line']}" if report["line"] else ""
    count = (report["cell"] or {}).get("execution_count")
    report["summary"] = (
        f"Cell {index} [{count}]{line} raised {name}: {message}".rstrip(": ")
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
                f"Cell {index} [{count}]{line}: the memory guard refused an allocation"
                f"{what}, since the {format_size(limit)} limit leaves {left}. The kernel "
                "is alive, with its variables."
            )
        else:
            report["summary"] = (
                f"Cell {index} [{count}]{line} was stopped by the memory guard: "
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
    where = f", line {line}" if line else ""
    report["summary"] = f"Cell {index}{where} ran longer than the {timeout:g} s timeout."
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
    samples = read_samples(session_dir)
    from .supervisor.collect import downsample

    memory.update(
        {
            "peak_bytes": max((c for _, c, _ in samples), default=None),
            "kernel_peak_bytes": max((k for _, _, k in samples), default=None),
            "limit_bytes": limit.limit_bytes if limit else None,
            "limit_source": limit.source if limit else None,
            "limit_kind": limit.kind if limit else None,
            "timeline": [list(p) for p in downsample([(t, c) for t, c, _ in samples], 500)],
        }
    )


def mark_cell_failed(cell: Any, report: dict[str, Any]) -> None:
    lines = [report.get("summary") or "The kernel died."]
    lines += [f"  • {fact}" for fact in report.get("evidence", [])]
    lines += [f"  → {tip}" for tip in report.get("advice", [])]
    cell.setdefault("outputs", []).append(
        nbformat.v4.new_output(  # type: ignore[no-untyped-call]
            "error",
            ename="KernelDied",
            evalue=f"{report.get('cause')}: {report.get('summary')}",
            traceback=lines,
        )
    )


def _load(path: str) -> dict[str, Any] | None:
    import json

    from .agent.private import read_private

    try:
        value = json.loads(read_private(path) or b"null")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def describe_limit(cgroup: LimitedCgroup | None) -> str:
    if cgroup is None:
        return "the limit that already applies"
    how = "a new memory cgroup" if cgroup.path else "a systemd scope"
    return f"{format_size(cgroup.limit_bytes)} ({how})"


__all__ = ["BatchResult", "describe_limit", "run_notebook"]
