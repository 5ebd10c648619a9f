"""Decide the cause of a kernel's end from the evidence."""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass

from ..agent.naming import cell_place
from ..evidence import CellRun, Evidence, Frame, StackDump
from ..probe.procfs import signal_name
from ..sizes import format_size
from .advice import advise
from .facts import last_dump_recursion, oom_share
from .hang import describe as describe_hang
from .stacks import cell_line, pick_thread, runaway_recursion

CAUSES = (
    "out_of_memory",
    "native_crash",
    "stack_overflow",
    "exit",
    "killed",
    "startup_failure",
    "hang",
    "unknown",
)
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE}
# A kernel without the agent counts as started once it has lived this long.
BLIND_STARTUP = 10.0


@dataclass(frozen=True)
class Diagnosis:
    cause: str
    summary: str
    evidence: tuple[str, ...]
    advice: tuple[str, ...]
    cell: CellRun | None = None
    line: int | None = None
    stack: tuple[Frame, ...] = ()  # innermost last

    def __post_init__(self) -> None:
        if self.cause not in CAUSES:  # the report contract lists every cause
            raise ValueError(f"unknown cause {self.cause!r}")


def diagnose(ev: Evidence) -> Diagnosis | None:
    """The diagnosis of a kernel's end, or None when nothing died (a requested
    shutdown, a clean exit)."""
    if ev.hang and ev.exit_code is None and not ev.clean_exit:
        # Ended (a restart, a shutdown, a kill) while stuck where an interrupt could not
        # reach: what the user must hear about is the hang, not the signal.
        how = signal_name(ev.signal) if ev.signal else "a kill of its process group"
        cause, facts = "hang", [f"the kernel (pid {ev.pid}) was ended by {how}"]
        facts.append(describe_hang(ev.hang, interrupt=True))
    elif _not_a_death(ev):
        return None
    else:
        cause, facts = _cause(ev)
    cell = _running_cell(ev)
    line, stack, where = _locate(ev, cell)
    facts = facts + where + _memory_facts(ev, cell)
    summary = _summary(cause, ev, cell, line)
    return Diagnosis(
        cause=cause,
        summary=summary,
        evidence=tuple(facts),
        advice=tuple(advise(cause, ev, stack)),
        cell=cell,
        line=line,
        stack=stack,
    )


def _not_a_death(ev: Evidence) -> bool:
    if ev.supervisor_lost:
        # Rebuilt from leftovers: only an OOM kill (a whole-container one that took
        # the supervisor too) counts; otherwise the group was killed on purpose
        # (jupyter_client's restart and shutdown send SIGKILL to the group). The
        # counter is read now, not at the death: an OOM kill of another process in a
        # shared cgroup since then must not be blamed on an idle kernel, so the
        # kernel must have been near the limit at its last sample too.
        return not (_oom_counted(ev) and (_near_limit(ev, 0.5) or _logged_oom_kill(ev)))
    if ev.requested is not None and (
        ev.exit_code is not None
        or ev.signal in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL)
    ):
        return True
    return ev.exit_code == 0 and (ev.clean_exit or not ev.agent_ready)


def _near_limit(ev: Evidence, share: float = 0.8) -> bool:
    mem = ev.memory
    if mem.limit is None or not mem.timeline:
        return False
    return mem.timeline[-1][1] >= share * mem.limit.limit_bytes


def _logged_oom_kill(ev: Evidence) -> bool:
    return any(f"Killed process {ev.pid} " in line for line in ev.kernel_log)


def _oom_counted(ev: Evidence) -> bool:
    before, after = ev.memory.oom_kills_before, ev.memory.oom_kills_after
    if before is not None and after is not None and after > before:
        return True
    return any("out of memory" in line.lower() for line in ev.kernel_log)


def _started(ev: Evidence) -> bool:
    if ev.agent_ready or ev.cells:
        return True
    agent_expected = any("ipykernel" in part for part in ev.kernel_argv[:4])
    return not agent_expected and ev.ended - ev.started > BLIND_STARTUP


def _cause(ev: Evidence) -> tuple[str, list[str]]:
    facts: list[str] = []
    if ev.signal is not None:
        facts.append(f"the kernel (pid {ev.pid}) was ended by {signal_name(ev.signal)}")
    elif ev.exit_code is not None:
        facts.append(f"the kernel (pid {ev.pid}) exited with code {ev.exit_code}")
    if ev.supervisor_lost:
        facts.append("the supervisor was killed along with the kernel; rebuilt from its records")
    oom = _oom_counted(ev)
    before, after = ev.memory.oom_kills_before, ev.memory.oom_kills_after
    if before is not None and after is not None and after > before:
        scope = (
            "the memory cgroup's" if ev.memory.limit and ev.memory.limit.path else "the system's"
        )
        facts.append(f"{scope} OOM-kill counter went from {before} to {after}")
    facts.extend(f"kernel log: {line}" for line in ev.kernel_log)

    if ev.signal == signal.SIGKILL or (ev.supervisor_lost and oom):
        if oom:
            recursing = last_dump_recursion(ev)
            if recursing is not None:
                facts.append(
                    f"the last stack dump before the kill is runaway recursion in {recursing}(): "
                    "its frames filled memory"
                )
            facts.extend(_guard_facts(ev))
            return "out_of_memory", facts
        if before is not None and after is not None:
            facts.append("the OOM-kill counter did not change, so this SIGKILL came from outside")
            return "killed", facts
        # No counter to read (no cgroup, or not readable) and no kernel log: judge by
        # how full memory was when the kill came.
        if _near_limit(ev):
            facts.append(
                "the OOM-kill counter could not be read, but memory was near the limit when "
                "the SIGKILL came: most likely the OOM killer"
            )
            return "out_of_memory", facts
        facts.append(
            "the OOM-kill counter could not be read, and memory was well below the limit: "
            "most likely killed from outside"
        )
        return "killed", facts
    if ev.signal in CRASH_SIGNALS:
        if ev.fatal:
            facts.append(f"faulthandler: Fatal Python error: {ev.fatal[0].fatal}")
        dump = pick_thread(ev.fatal, ev.main_thread)
        recursion = runaway_recursion(dump) if dump else None
        if recursion is not None and ev.signal in (signal.SIGSEGV, signal.SIGBUS):
            function, count = recursion
            facts.append(
                f"{count} of the {len(dump.frames) if dump else 0} innermost frames are "
                f"{function}(): runaway recursion through C code"
            )
            return "stack_overflow", facts
        if not _started(ev):
            facts.append("it crashed while starting, before it was ready")
        return "native_crash", facts
    if ev.signal is not None:
        if ev.signal == signal.SIGINT:
            facts.append("the kernel does not handle SIGINT, so an interrupt ended it")
        return "killed", facts
    if ev.exit_code is not None:
        if not _started(ev):
            last = _last_error_line(ev.stderr_tail)
            if last:
                facts.append(f"its stderr ends with: {last}")
            return "startup_failure", facts
        if ev.exit_code == 0:
            facts.append("it exited without a shutdown request (os._exit(0) or similar)")
        return "exit", facts
    return "unknown", facts


def _guard_facts(ev: Evidence) -> list[str]:
    """Why the memory guard, when it was on, did not save the kernel."""
    guard = ev.guard
    if not guard.get("enabled"):
        return []
    on = f"the memory guard was on (at {guard.get('threshold')})"
    allocation = guard.get("allocation") or {}
    if allocation and not allocation.get("error"):
        reserve = allocation.get("reserve_bytes") or 0
        room = "the room left" + (
            f" plus {reserve // 1024**2} MiB for thread stacks" if reserve else ""
        )
        on += (
            f"; its allocation layer refuses any single allocation larger than {room}, and "
            "none was: memory filled in smaller steps, or in memory it does not count "
            "(shared memory, memory-mapped files, child processes)"
        )
    if guard.get("signals"):
        return [
            f"{on}; it signalled the cell, but the growth was inside one long call into C "
            "code, which Python cannot interrupt, and the OOM killer came first"
        ]
    return [
        f"{on}; no sample saw the cell past the threshold before the kill: the memory "
        "filled faster than it samples (growth inside one C call)"
    ]


def _running_cell(ev: Evidence) -> CellRun | None:
    cell = ev.running_cell
    if cell is None:
        return None
    file = ev.state.file if ev.state.seq == cell.seq else None
    if file is not None and cell.file is None:
        cell = dataclasses.replace(cell, file=file)
    return cell


def _locate(ev: Evidence, cell: CellRun | None) -> tuple[int | None, tuple[Frame, ...], list[str]]:
    """(line in the running cell, stack innermost last, facts) from the freshest
    evidence that names the cell: the crash dump, the agent's line, the last dump."""
    if cell is None:
        return None, (), []
    main = ev.main_thread
    earlier = ev.cells[:-1]
    # The thread that crashed names the line when it ran the cell's code (a crash in
    # a background thread started by the cell); else the main thread, where cells run.
    crashed = next((d for d in ev.fatal if d.current), None)
    for crash in (crashed, pick_thread(ev.fatal, main)):
        if crash is not None:
            line = cell_line(crash.frames, cell, earlier, truncated=crash.truncated)
            if line is not None:
                return line, crash.frames, []
    crash = pick_thread(ev.fatal, main)
    state_line = ev.state.line if ev.state.seq == cell.seq else None
    best_dump: StackDump | None = None
    for threads in ev.dumps:
        dump = pick_thread(threads, main)
        if dump is not None and cell_line(dump.frames, cell, earlier, truncated=dump.truncated):
            best_dump = dump
    if isinstance(state_line, int):
        frame = ev.state.frame
        stack: tuple[Frame, ...] = (Frame(cell.file or "<cell>", state_line, "<module>"),)
        if frame is not None and (frame[0], frame[1]) != (cell.file, state_line):
            stack = (*stack, Frame(*frame))
        if best_dump is not None and crash is None:
            dump_line = cell_line(best_dump.frames, cell, earlier, truncated=best_dump.truncated)
            if dump_line == state_line:
                return state_line, best_dump.frames, []
        facts = []
        if crash is not None and crash.truncated:
            facts.append(
                "the crash dump holds only the 100 innermost frames; the cell's line "
                "comes from the agent's record of the running line"
            )
        return state_line, stack if crash is None else crash.frames, facts
    if best_dump is not None:
        line = cell_line(best_dump.frames, cell, earlier, truncated=best_dump.truncated)
        return line, best_dump.frames, ["line from the last stack dump taken before the end"]
    return None, crash.frames if crash else (), []


def _memory_facts(ev: Evidence, cell: CellRun | None) -> list[str]:
    mem = ev.memory
    facts = []
    if mem.limit is not None:
        facts.append(
            f"peak memory counted against the limit: {format_size(mem.peak_bytes)} of "
            f"{format_size(mem.limit.limit_bytes)} ({mem.limit.source})"
        )
    if mem.kernel_peak_bytes:
        facts.append(f"the kernel's processes peaked at {format_size(mem.kernel_peak_bytes)} RSS")
    if cell is not None and mem.timeline:
        start = cell.started - ev.started
        before = [c for t, c in mem.timeline if t <= start]
        during = [c for t, c in mem.timeline if t > start]
        if before and during:
            facts.append(
                f"while the cell ran, memory grew from {format_size(before[-1])} to "
                f"{format_size(max(during))}"
            )
    for name, value in mem.rlimits.items():
        facts.append(f"{name} is {format_size(value)} (virtual memory: context only)")
    return facts


def where_text(cell: CellRun | None, line: int | None) -> str:
    """Where in the summary's sentence the cell ran: " at In [3], line 2"."""
    if cell is None:
        return ""
    return f" at {cell_place(cell.execution_count, None, line)}"


def _summary(cause: str, ev: Evidence, cell: CellRun | None, line: int | None) -> str:
    where = where_text(cell, line)
    mem = ev.memory
    if cause == "out_of_memory":
        if mem.limit is None:
            return f"Out of memory{where}: the OOM killer ended the kernel."
        share = oom_share(ev)
        used = f"{format_size(mem.peak_bytes)} of the {format_size(mem.limit.limit_bytes)}"
        what = "limit" if mem.limit.kind != "system" else "RAM + swap"
        if share is not None and share < 0.7:
            return (
                f"Out of memory{where}: everything under the {what} reached {used}, while this "
                f"kernel held {format_size(mem.kernel_peak_bytes)}."
            )
        return f"Out of memory{where}: the kernel grew to {used} {what}."
    if cause == "stack_overflow":
        return f"Stack overflow{where}: runaway recursion through C code crashed the kernel."
    if cause == "hang":
        return (
            f"The kernel hung{where} in a call that ignored the interrupt, and was ended "
            f"by {signal_name(ev.signal) if ev.signal else 'a signal'} (a restart or shutdown)."
        )
    if cause == "native_crash":
        name = signal_name(ev.signal) if ev.signal else "a fatal signal"
        return f"Native crash ({name}){where}: code outside Python crashed the kernel."
    if cause == "exit":
        return f"The kernel exited by itself with code {ev.exit_code}{where}."
    if cause == "killed":
        name = signal_name(ev.signal) if ev.signal else "a signal"
        mem = ev.memory
        if ev.signal == signal.SIGKILL and None in (mem.oom_kills_before, mem.oom_kills_after):
            return (
                f"The kernel was killed by {name}{where}, most likely from outside: "
                "memory was well below the limit."
            )
        return f"The kernel was killed by {name} from outside{where}; it was not out of memory."
    if cause == "startup_failure":
        last = _last_error_line(ev.stderr_tail)
        return "The kernel failed to start" + (f": {last}" if last else ".")
    return f"The kernel ended for an unknown reason{where}."


def _last_error_line(text: str) -> str | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "~")):
            return line[:300]
    return None
