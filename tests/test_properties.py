"""Property tests of the pure parts: sizes, cgroup and procfs file parsing on fixture
trees, and the diagnosis over generated evidence.

Each property that writes files makes its own tempfile.TemporaryDirectory: pytest's
function-scoped tmp_path is shared by every example hypothesis runs in one test.
"""

from __future__ import annotations

import dataclasses
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_doctor._errors import UsageError
from kernel_doctor.agent.protocol import State
from kernel_doctor.diagnosis import diagnose
from kernel_doctor.diagnosis.causes import BLIND_STARTUP, CAUSES, CRASH_SIGNALS
from kernel_doctor.evidence import CellRun, Evidence, Frame, MemoryEvidence, StackDump
from kernel_doctor.probe.base import MemoryLimit, keyed, parse_keyed
from kernel_doctor.probe.cgroup import UNLIMITED, CgroupV1, CgroupV2
from kernel_doctor.probe.procfs import signal_name
from kernel_doctor.probe.system import SystemMemory
from kernel_doctor.sizes import format_size, parse_size
from test_probe import V1_UNLIMITED, Host, write

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4
MAX_I64 = 2**63 - 1

FAST = settings(max_examples=100, deadline=None, database=None)
FILES = settings(max_examples=50, deadline=None, database=None)  # examples that write files

# --------------------------------------------------------------------------- sizes


@FAST
@given(st.integers(min_value=1, max_value=2**62))
def test_format_then_parse_is_within_the_shown_rounding(num: int) -> None:
    # format_size shows one decimal below 10 of a unit and none above: at most half a
    # unit of the last shown digit off, which is under 5.1% of the value (the value
    # is at least ~1 of its unit), plus a byte of int() truncation.
    shown = format_size(num)
    back = parse_size(shown)
    assert abs(back - num) <= num * 0.051 + 1, (num, shown, back)
    if num < KiB:
        assert back == num  # bytes are shown exactly
    # What parse_size reads back from a shown size is a fixed point of the round trip.
    assert parse_size(format_size(back)) == back


@FAST
@given(
    text=st.sampled_from(["512M", "1.5G", "2GiB", "1073741824", ".5g", "100b", "3 MB"]),
    left=st.text(alphabet=" \t", max_size=3),
    right=st.text(alphabet=" \t\n", max_size=3),
)
def test_parse_size_ignores_surrounding_blanks(text: str, left: str, right: str) -> None:
    assert parse_size(left + text + right) == parse_size(text)


# Text that looks like a size often enough to reach every branch of parse_size.
_size_like = st.builds(
    lambda sign, digits, dot, frac, blank, unit: f"{sign}{digits}{dot}{frac}{blank}{unit}",
    st.sampled_from(["", "", "-", "+", " "]),
    st.text(alphabet="0123456789", max_size=12),
    st.sampled_from(["", "", ".", ",", ".."]),
    st.text(alphabet="0123456789", max_size=4),
    st.sampled_from(["", " ", "\t"]),
    st.sampled_from(["", "k", "M", "GiB", "tb", "XB", "B", "e9", "PiB", "g b", "Ki"]),
)


@FAST
@given(st.one_of(st.text(max_size=30), _size_like))
def test_parse_size_accepts_a_positive_size_or_raises_usage_error(text: str) -> None:
    try:
        value = parse_size(text)
    except UsageError as exc:
        # One line for the CLI's "kernel-doctor: error: ..." whatever the input holds.
        assert "\n" not in str(exc) and "\r" not in str(exc)
        assert exc.exit_code == 2
    else:
        assert isinstance(value, int) and value > 0


@pytest.mark.parametrize("text", ["9" * 400, "1" + "0" * 300 + "T"], ids=["400-digits", "1e300T"])
def test_parse_size_rejects_sizes_too_large_for_a_float(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


# --------------------------------------------------------------------- parse_keyed

_key = st.from_regex(r"[A-Za-z][A-Za-z0-9_()]{0,24}", fullmatch=True)
_count = st.integers(min_value=0, max_value=2**64)
# Lines parse_keyed must skip: blank, one token, a value that is not an integer.
_junk_line = st.one_of(
    st.sampled_from(["", " ", "\t", "   \t ", "#", "--", "oom_kill", "key:"]),
    st.builds(
        lambda k, v: f"{k} {v}",
        _key,
        st.sampled_from(["max", "n/a", "1.5", "0x10", "12abc", "-", "kB", "∞"]),
    ),
)


@FAST
@given(st.text(max_size=300))
def test_parse_keyed_never_raises(text: str) -> None:
    values = parse_keyed(text)
    for key, value in values.items():
        assert isinstance(value, int)
        assert key and ":" not in key and key == key.strip() and len(key.split()) == 1


@FAST
@given(
    good=st.lists(st.tuples(_key, _count), max_size=12),
    junk=st.lists(_junk_line, max_size=8),
    sep=st.sampled_from([" ", "\t", ": ", ":", "  :  "]),
    suffix=st.sampled_from(["", " kB", " pages"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    data=st.data(),
)
def test_parse_keyed_reads_good_lines_and_skips_the_rest(
    good: list[tuple[str, int]],
    junk: list[str],
    sep: str,
    suffix: str,
    newline: str,
    data: Any,
) -> None:
    lines = [f"{k}{sep}{v}{suffix}" for k, v in good]
    # Junk goes anywhere among the good lines; their order is kept (the last one wins).
    for line in junk:
        lines.insert(data.draw(st.integers(0, len(lines)), label="at"), line)
    text = newline.join(lines) + data.draw(st.sampled_from(["", newline]), label="end")
    assert parse_keyed(text) == dict(good)
    # The supervisor's hot path finds single keys without parsing the rest: the same
    # values, where a key has one good line (as in the kernel's files).
    keys = [k for k, _ in good]
    more = data.draw(st.lists(_key, max_size=3), label="asked")
    asked = [k for k in [*dict(good), *more] if keys.count(k) <= 1]
    assert keyed(text, *asked) == [parse_keyed(text).get(k) for k in asked]


# ------------------------------------------------------------------ cgroup files

_STAT_KEYS = ("inactive_file", "total_inactive_file", "hierarchical_memory_limit", "oom_kill")
# Real memory.stat / memory.events keys, and made-up ones a newer kernel might add.
_extra_key = st.one_of(
    st.sampled_from(
        [
            *("anon", "file", "kernel", "shmem", "active_file", "active_anon", "inactive_anon"),
            *("cache", "rss", "mapped_file", "pgfault", "workingset_refault_file", "slab"),
            *("low", "high", "max", "oom", "oom_group_kill", "under_oom", "oom_kill_disable"),
        ]
    ),
    st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True),
).filter(lambda k: k not in _STAT_KEYS)
_extras = st.dictionaries(_extra_key, _count, max_size=10)
# memory.max / limit_in_bytes values, weighted towards the "no limit" edge.
_limit_value = st.one_of(
    st.integers(min_value=0, max_value=MAX_I64),
    st.integers(min_value=0, max_value=64 * GiB),
    st.sampled_from([UNLIMITED - 1, UNLIMITED, UNLIMITED + 1, V1_UNLIMITED, MAX_I64]),
)
_usage = st.integers(min_value=0, max_value=MAX_I64)
_maybe = st.none() | _count


@st.composite
def keyed_file(draw: Any, known: dict[str, int | None], sep: str = " ", unit: str = "") -> str:
    """A memory.stat/events/oom_control (or meminfo) text: the ``known`` keys (None: left
    out) among random extra keys and junk lines, in any order, maybe no final newline."""
    lines = [f"{k}{sep}{v}{unit}" for k, v in draw(_extras).items()]
    lines += draw(st.lists(_junk_line, max_size=3))
    lines += [f"{k}{sep}{v}{unit}" for k, v in known.items() if v is not None]
    lines = draw(st.permutations(lines))
    end: str = draw(st.sampled_from(["\n", "", "\n\n"]))
    return "\n".join(lines) + end


def _value_text(value: int | str) -> str:
    return f"{value}\n"


@FILES
@given(
    memory_max=st.one_of(st.just("max"), _limit_value),
    current=st.none() | _usage,
    inactive=_maybe,
    oom_kill=_maybe,
    data=st.data(),
)
def test_v2_files(
    memory_max: int | str,
    current: int | None,
    inactive: int | None,
    oom_kill: int | None,
    data: Any,
) -> None:
    stat = data.draw(keyed_file({"inactive_file": inactive}), label="memory.stat")
    events = data.draw(keyed_file({"oom_kill": oom_kill}), label="memory.events")
    with tempfile.TemporaryDirectory() as tmp:
        leaf = Path(tmp)
        write(leaf / "memory.max", _value_text(memory_max))
        if current is not None:
            write(leaf / "memory.current", _value_text(current))
        write(leaf / "memory.stat", stat)
        write(leaf / "memory.events", events)

        probed = CgroupV2.probe(str(leaf), str(leaf))
        if memory_max == "max" or int(memory_max) >= UNLIMITED:
            assert probed is None  # "max", or a value so large it is no limit at all
        else:
            assert probed is not None
            assert probed.limit == MemoryLimit(
                int(memory_max), "cgroup-v2", f"cgroup v2 memory.max of {leaf}", str(leaf)
            )
            probed.close()

        # The counters read the same whatever the limit.
        source = CgroupV2(str(leaf), MemoryLimit(GiB, "cgroup-v2", "test", str(leaf)))
        try:
            if current is None:
                assert source.counted() is None
            else:
                # memory.current less reclaimable page cache, never below zero, even
                # when inactive_file (counted over the subtree) exceeds memory.current.
                assert source.counted() == max(0, current - (inactive or 0))
            assert source.oom_kills() == oom_kill
        finally:
            source.close()


@FILES
@given(
    limit=st.none() | _limit_value,
    hierarchical=st.none() | _limit_value,
    usage=st.none() | _usage,
    inactive=_maybe,
    total_inactive=_maybe,
    oom_kill=_maybe,
    data=st.data(),
)
def test_v1_files(
    limit: int | None,
    hierarchical: int | None,
    usage: int | None,
    inactive: int | None,
    total_inactive: int | None,
    oom_kill: int | None,
    data: Any,
) -> None:
    stat = data.draw(
        keyed_file(
            {
                "inactive_file": inactive,
                "total_inactive_file": total_inactive,
                "hierarchical_memory_limit": hierarchical,
            }
        ),
        label="memory.stat",
    )
    control = data.draw(
        keyed_file({"oom_kill_disable": 0, "under_oom": 0, "oom_kill": oom_kill}),
        label="memory.oom_control",
    )
    with tempfile.TemporaryDirectory() as tmp:
        leaf = Path(tmp)
        if limit is not None:
            write(leaf / "memory.limit_in_bytes", _value_text(limit))
        if usage is not None:
            write(leaf / "memory.usage_in_bytes", _value_text(usage))
        write(leaf / "memory.stat", stat)
        write(leaf / "memory.oom_control", control)

        # The tightest of limit_in_bytes and memory.stat's hierarchical_memory_limit;
        # 9223372036854771712 (v1's "unlimited") and anything >= 2**62 are no limit.
        limits = [v for v in (limit, hierarchical) if v is not None and v < UNLIMITED]
        probed = CgroupV1.probe(str(leaf), str(leaf))
        if not limits:
            assert probed is None
        else:
            assert probed is not None
            assert probed.limit.limit_bytes == min(limits)
            assert probed.limit.kind == "cgroup-v1"
            assert probed.limit.path == str(leaf)
            probed.close()

        source = CgroupV1(str(leaf), MemoryLimit(GiB, "cgroup-v1", "test", str(leaf)))
        try:
            if usage is None:
                assert source.counted() is None
            else:
                # total_inactive_file (hierarchical) wins over inactive_file.
                cache = total_inactive if total_inactive is not None else (inactive or 0)
                assert source.counted() == max(0, usage - cache)
            assert source.oom_kills() == oom_kill
        finally:
            source.close()


# One level of a cgroup hierarchy: no file, "max", junk, or a number.
_level = st.one_of(st.none(), st.just("max"), st.just("garbage"), _limit_value)


def _expected_limit(levels: list[int | str | None], dirs: list[Path]) -> tuple[int, Path] | None:
    """The tightest numeric limit below UNLIMITED; on a tie, the deepest directory."""
    best: tuple[int, Path] | None = None
    for value, directory in zip(levels, dirs, strict=True):  # leaf first
        if isinstance(value, int) and value < UNLIMITED and (best is None or value < best[0]):
            best = (value, directory)
    return best


@FILES
@given(levels=st.lists(_level, min_size=1, max_size=4), v1=st.booleans())
def test_limit_on_any_ancestor(levels: list[int | str | None], v1: bool) -> None:
    name = "memory.limit_in_bytes" if v1 else "memory.max"
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        # levels[0] is the leaf, levels[-1] the mount point.
        dirs = [
            top.joinpath(*[f"l{i}" for i in range(len(levels) - 1 - depth)])
            for depth in range(len(levels))
        ]
        for value, directory in zip(levels, dirs, strict=True):
            directory.mkdir(parents=True, exist_ok=True)
            if value is not None:
                write(directory / name, _value_text(value))
        cls = CgroupV1 if v1 else CgroupV2
        probed = cls.probe(str(dirs[0]), str(top))
        expected = _expected_limit(levels, dirs)
        if expected is None:
            assert probed is None
        else:
            assert probed is not None
            assert (probed.limit.limit_bytes, probed.limit.path) == (
                expected[0],
                str(expected[1]),
            )
            probed.close()


@FILES
@given(
    ram_kib=st.integers(min_value=0, max_value=2**40),
    swap_kib=st.integers(min_value=0, max_value=2**36),
    memory_max=st.one_of(st.just("max"), _limit_value),
)
def test_find_memory_source_takes_the_tightest(
    ram_kib: int, swap_kib: int, memory_max: int | str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp), ram=ram_kib * KiB, swap=swap_kib * KiB)
        cg = host.mount_v2()
        write(cg / "k" / "memory.max", _value_text(memory_max))
        host.member_of(v2="/k")
        source = host.find()
        try:
            system = (ram_kib + swap_kib) * KiB
            cgroup = memory_max if isinstance(memory_max, int) and memory_max < UNLIMITED else None
            # An unreadable or empty meminfo (0) is no limit; a tie goes to the system.
            if cgroup is not None and (system == 0 or cgroup < system):
                assert isinstance(source, CgroupV2)
                assert source.limit.limit_bytes == cgroup
            else:
                assert isinstance(source, SystemMemory)
                assert source.limit.limit_bytes == system
        finally:
            source.close()


@FILES
@given(
    total=st.none() | st.integers(min_value=0, max_value=2**40),
    swap=st.none() | st.integers(min_value=0, max_value=2**36),
    available_share=st.floats(min_value=0, max_value=1),
    has_available=st.booleans(),
    oom_kill=_maybe,
    data=st.data(),
)
def test_system_memory_files(
    total: int | None,
    swap: int | None,
    available_share: float,
    has_available: bool,
    oom_kill: int | None,
    data: Any,
) -> None:
    available = int((total or 0) * available_share) if has_available else None
    # meminfo's "Key:   123 kB" lines, with the keys it needs among others.
    meminfo = data.draw(
        keyed_file(
            {"MemTotal": total, "SwapTotal": swap, "MemAvailable": available}, ":   ", " kB"
        ),
        label="meminfo",
    )
    vmstat = data.draw(keyed_file({"oom_kill": oom_kill}), label="vmstat")
    with tempfile.TemporaryDirectory() as tmp:
        proc = Path(tmp)
        write(proc / "meminfo", meminfo)
        write(proc / "vmstat", vmstat)
        source = SystemMemory(str(proc))
        try:
            assert source.limit.limit_bytes == ((total or 0) + (swap or 0)) * KiB
            assert source.limit.kind == "system" and source.limit.path is None
            if total is None or available is None:
                assert source.counted() is None
            else:
                assert source.counted() == (total - available) * KiB
            assert source.oom_kills() == oom_kill
        finally:
            source.close()


_garbage = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"\n", b"max\n", b"-1\n", b"\xff\xfe\n", b"12 34\n", b" 7 \n"]),
)


@FILES
@given(
    files=st.fixed_dictionaries(
        {},
        optional={
            name: _garbage
            for name in (
                "memory.max",
                "memory.current",
                "memory.stat",
                "memory.events",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "memory.oom_control",
                "memory.peak",
                "memory.max_usage_in_bytes",
            )
        },
    )
)
def test_sources_never_raise_on_garbage(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        leaf = Path(tmp)
        for name, content in files.items():
            (leaf / name).write_bytes(content)
        for cls in (CgroupV1, CgroupV2):
            probed = cls.probe(str(leaf), str(leaf))
            if probed is not None:
                assert probed.limit.limit_bytes < UNLIMITED
                probed.close()
            source = cls(str(leaf), MemoryLimit(GiB, "test", "test", str(leaf)))
            try:
                counted = source.counted()
                assert counted is None or (isinstance(counted, int) and counted >= 0)
                assert source.oom_kills() is None or isinstance(source.oom_kills(), int)
                assert source.peak() is None or isinstance(source.peak(), int)
            finally:
                source.close()


# --------------------------------------------------------------------- diagnose

KERNEL_PID = 4321
MAIN = 0x00007F0000000001
WORKER = 0x00007F0000000002
CELL_FILES = [f"/tmp/ipykernel_{KERNEL_PID}/{n}.py" for n in (111, 222, 333)]
SIGNALS = sorted(
    {
        *CRASH_SIGNALS,
        signal.SIGKILL,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGINT,
        signal.SIGUSR1,
        signal.SIGPIPE,
        signal.SIGALRM,
        signal.SIGXCPU,
        signal.SIGRTMIN + 6,
    }
)
IPYKERNEL_ARGV = ("/usr/bin/python3", "-m", "ipykernel_launcher", "-f", "/tmp/kernel-1.json")
OTHER_ARGV = ("/usr/lib/R/bin/exec/R", "--slave", "-e", "IRkernel::main()")
LIMITS = [
    MemoryLimit(2 * GiB, "cgroup-v2", "cgroup v2 memory.max of /sys/fs/cgroup/kd", "/kd"),
    MemoryLimit(GiB, "cgroup-v1", "cgroup v1 memory limit of /sys/fs/cgroup/memory/kd", "/kd"),
    MemoryLimit(16 * GiB, "system", "system RAM + swap"),
]
OOM_LINE = (
    f"Memory cgroup out of memory: Killed process {KERNEL_PID} (python) total-vm:1862796kB, "
    "anon-rss:1045724kB, file-rss:16648kB, shmem-rss:8kB, UID:0 pgtables:2228kB"
)
OTHER_LOG = [
    f"python3[{KERNEL_PID}]: segfault at 0 ip 00007f3b2c0d1a2e sp 00007ffd error 4 in libc.so.6",
    f"traps: python3[{KERNEL_PID}] general protection fault ip:7f3b2c sp:7ffd error:0",
]

_frame = st.builds(
    Frame,
    file=st.sampled_from(
        [
            *CELL_FILES,
            "<timed exec>",
            "/usr/lib/python3.11/threading.py",
            "/usr/lib/python3/site-packages/numpy/core/_methods.py",
            "/usr/lib/python3/site-packages/IPython/core/interactiveshell.py",
        ]
    ),
    line=st.integers(min_value=1, max_value=400),
    function=st.sampled_from(["<module>", "recurse", "helper", "wait", "string_at", "run_code"]),
)
# Either a short stack or a deep one mostly of one recursing frame (runaway recursion).
_frames = st.one_of(
    st.lists(_frame, max_size=8).map(tuple),
    st.builds(
        lambda head, rec, n, tail: (*head, *([rec] * n), *tail),
        st.lists(_frame, max_size=3),
        _frame,
        st.integers(min_value=30, max_value=110),
        st.lists(_frame, max_size=3),
    ),
)
_stack_dump = st.builds(
    StackDump,
    thread=st.sampled_from([f"0x{MAIN:016x}", f"0x{WORKER:016x}", "0x0"]),
    frames=_frames,
    truncated=st.booleans(),
    fatal=st.sampled_from([None, "Segmentation fault", "Aborted", "Bus error"]),
    current=st.booleans(),
)
_threads = st.lists(_stack_dump, max_size=2).map(tuple)


@st.composite
def _cells(draw: Any, started: float, ended: float) -> tuple[CellRun, ...]:
    count = draw(st.integers(min_value=0, max_value=4))
    last_running = draw(st.booleans())
    cells = []
    for i in range(count):
        running = last_running and i == count - 1
        begin = draw(st.floats(min_value=started, max_value=ended))
        cells.append(
            CellRun(
                seq=i + 1,
                execution_count=draw(st.none() | st.integers(min_value=1, max_value=99)),
                cell_id=draw(st.none() | st.just(f"id-{i}")),
                source=draw(st.sampled_from(["x = 1", "f()", "%%time\nrecurse(10**6)", ""])),
                started=begin,
                ended=None if running else draw(st.floats(min_value=begin, max_value=ended)),
                file=draw(st.none() | st.sampled_from(CELL_FILES)),
                error=draw(st.none() | st.just({"type": "ValueError", "message": "x"})),
            )
        )
    return tuple(cells)


_state = st.fixed_dictionaries(
    {},
    optional={
        "seq": st.none() | st.integers(min_value=1, max_value=4),
        "line": st.none() | st.integers(min_value=1, max_value=50),
        "file": st.sampled_from(CELL_FILES),
        "main_thread": st.sampled_from([MAIN, WORKER]),
        "frame": st.builds(
            lambda f: [f.file, f.line, f.function],
            _frame,
        ),
        "busy": st.booleans(),
        "t": st.floats(min_value=1000, max_value=3000),
    },
).map(lambda record: State.from_json(record) or State())  # as the protocol reads it


@st.composite
def _memory(draw: Any, duration: float) -> MemoryEvidence:
    limit = draw(st.none() | st.sampled_from(LIMITS))
    cap = limit.limit_bytes if limit else 8 * GiB
    timeline = sorted(
        draw(
            st.lists(
                st.tuples(
                    st.floats(min_value=0, max_value=duration), st.integers(0, cap + cap // 10)
                ),
                max_size=6,
            )
        )
    )
    counts = st.none() | st.integers(min_value=0, max_value=5)
    return MemoryEvidence(
        limit=limit,
        timeline=tuple(timeline),
        peak_bytes=draw(st.none() | st.integers(0, cap + cap // 10)),
        kernel_peak_bytes=draw(st.none() | st.integers(0, cap + cap // 10)),
        kernel_last_bytes=draw(st.none() | st.integers(0, cap)),
        oom_kills_before=draw(counts),
        oom_kills_after=draw(counts),
        rlimits=draw(st.sampled_from([{}, {"RLIMIT_AS": 4 * GiB}])),
    )


@st.composite
def evidence(draw: Any) -> Evidence:
    started = 1000.0
    duration = draw(st.sampled_from([0.5, 3.0, BLIND_STARTUP + 1, 900.0]))
    ended = started + duration
    # How the kernel ended: a signal, an exit status, or (rebuilt evidence) neither.
    how = draw(st.sampled_from(["signal", "signal", "signal", "exit", "exit", "neither"]))
    signum = draw(st.sampled_from(SIGNALS)) if how == "signal" else None
    exit_code = draw(st.sampled_from([0, 0, 1, 3, 120, 255])) if how == "exit" else None
    return Evidence(
        kernel_argv=draw(st.sampled_from([IPYKERNEL_ARGV, OTHER_ARGV])),
        pid=KERNEL_PID,
        started=started,
        ended=ended,
        exit_code=exit_code,
        signal=signum,
        requested=draw(st.sampled_from([None] * 5 + ["SIGTERM", "SIGHUP", "launcher exited"])),
        agent_ready=draw(st.booleans()),
        clean_exit=draw(st.booleans()),
        memory=draw(_memory(duration)),
        cells=draw(_cells(started, ended)),
        state=draw(_state),
        dumps=tuple(draw(st.lists(_threads, max_size=2))),
        fatal=draw(_threads),
        stderr_tail=draw(
            st.sampled_from(
                [
                    "",
                    'Traceback (most recent call last):\n  File "x.py", line 1\n'
                    "ModuleNotFoundError: No module named 'ipykernel'\n",
                    "OSError: [Errno 98] Address already in use\n",
                    "   \n^^^^\n",
                ]
            )
        ),
        kernel_log=tuple(draw(st.lists(st.sampled_from([OOM_LINE, *OTHER_LOG]), max_size=2))),
        supervisor_lost=draw(st.sampled_from([False, False, False, True])),
    )


def _oom_counter_rose(ev: Evidence) -> bool:
    before, after = ev.memory.oom_kills_before, ev.memory.oom_kills_after
    return before is not None and after is not None and after > before


def _oom_counted(ev: Evidence) -> bool:
    return _oom_counter_rose(ev) or any("out of memory" in line.lower() for line in ev.kernel_log)


def _near_limit(ev: Evidence, share: float) -> bool:
    limit, timeline = ev.memory.limit, ev.memory.timeline
    return limit is not None and bool(timeline) and timeline[-1][1] >= share * limit.limit_bytes


def _is_not_a_death(ev: Evidence) -> bool:
    """diagnose's docstring: None for a requested shutdown or a clean exit; rebuilt
    evidence (supervisor lost) counts only an OOM kill of a kernel that was near the
    limit (or that the kernel log names)."""
    if ev.supervisor_lost:
        logged = any(f"Killed process {ev.pid} " in line for line in ev.kernel_log)
        return not (_oom_counted(ev) and (_near_limit(ev, 0.5) or logged))
    ending = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL)
    if ev.requested is not None and (ev.exit_code is not None or ev.signal in ending):
        return True
    return ev.exit_code == 0 and (ev.clean_exit or not ev.agent_ready)


def _started(ev: Evidence) -> bool:
    if ev.agent_ready or ev.cells:
        return True
    agent_expected = any("ipykernel" in part for part in ev.kernel_argv[:4])
    return not agent_expected and ev.ended - ev.started > BLIND_STARTUP


def _expected_causes(ev: Evidence) -> set[str]:
    if ev.signal == signal.SIGKILL or (ev.supervisor_lost and _oom_counted(ev)):
        if _oom_counted(ev):
            return {"out_of_memory"}
        if None in (ev.memory.oom_kills_before, ev.memory.oom_kills_after):
            # No counter to read: judged by how full memory was at the kill.
            return {"out_of_memory"} if _near_limit(ev, 0.8) else {"killed"}
        return {"killed"}
    if ev.signal in CRASH_SIGNALS:
        deep = any(len(d.frames) >= 50 for d in ev.fatal)
        if ev.signal in (signal.SIGSEGV, signal.SIGBUS) and deep:
            return {"stack_overflow", "native_crash"}  # stack_overflow if the recursion is
        return {"native_crash"}  # in the thread picked; other crashes are never one
    if ev.signal is not None:
        return {"killed"}
    if ev.exit_code is not None:
        return {"exit"} if _started(ev) else {"startup_failure"}
    return {"unknown"}


DIAGNOSE = settings(max_examples=200, deadline=None, database=None)
TARGETED = settings(max_examples=60, deadline=None, database=None)


@DIAGNOSE
@given(evidence())
def test_diagnose_is_total_and_follows_the_decision_table(ev: Evidence) -> None:
    d = diagnose(ev)
    if _is_not_a_death(ev):
        assert d is None
        return
    assert d is not None
    assert d.cause in CAUSES
    assert d.cause in _expected_causes(ev)
    assert d.summary.strip() and "\n" not in d.summary
    assert d.advice and all(tip.strip() for tip in d.advice)
    assert all(fact.strip() for fact in d.evidence)

    # The cell is the one that started and never ended, and only it.
    running = ev.running_cell
    if running is None:
        assert d.cell is None and d.line is None
    else:
        assert d.cell is not None
        assert (d.cell.seq, d.cell.source, d.cell.started) == (
            running.seq,
            running.source,
            running.started,
        )
        if running.execution_count and d.cause != "startup_failure":
            assert f" at In [{running.execution_count}]" in d.summary
    if d.line is not None:
        assert f"line {d.line}" in d.summary or d.cause == "startup_failure"

    # What the summary says about the ending signal or status.
    if d.cause in ("killed", "native_crash"):
        assert ev.signal is not None and signal_name(ev.signal) in d.summary
    if d.cause == "killed":
        assert "not out of memory" in d.summary or "well below the limit" in d.summary
    if d.cause == "exit":
        assert f"code {ev.exit_code}" in d.summary
    if d.cause == "out_of_memory":
        assert d.summary.startswith("Out of memory")
    if _oom_counter_rose(ev):
        before, after = ev.memory.oom_kills_before, ev.memory.oom_kills_after
        assert any(f"went from {before} to {after}" in fact for fact in d.evidence)


@TARGETED
@given(evidence(), st.integers(0, 5), st.integers(1, 3), st.booleans())
def test_sigkill_with_an_oom_kill_is_out_of_memory(
    ev: Evidence, before: int, more: int, lost: bool
) -> None:
    # A lost supervisor's leftovers count an OOM kill only for a kernel that was
    # near the limit when last sampled (the counter is read later, at recovery).
    limit = LIMITS[1] if lost else ev.memory.limit
    timeline = ((1.0, LIMITS[1].limit_bytes),) if lost else ev.memory.timeline
    memory = MemoryEvidence(
        limit=limit,
        timeline=timeline,
        peak_bytes=ev.memory.peak_bytes,
        kernel_peak_bytes=ev.memory.kernel_peak_bytes,
        oom_kills_before=before,
        oom_kills_after=before + more,
    )
    ev = dataclasses.replace(
        ev, signal=signal.SIGKILL, exit_code=None, requested=None, memory=memory
    )
    ev = dataclasses.replace(ev, supervisor_lost=lost)
    d = diagnose(ev)
    assert d is not None and d.cause == "out_of_memory"
    assert d.summary.startswith("Out of memory")
    assert any(f"went from {before} to {before + more}" in fact for fact in d.evidence)
    assert any("chunks" in tip or "recursed" in tip for tip in d.advice)


@TARGETED
@given(evidence(), st.integers(0, 5), st.integers(0, 3))
def test_sigkill_with_a_known_unchanged_counter_is_killed(
    ev: Evidence, after: int, less: int
) -> None:
    memory = MemoryEvidence(
        limit=ev.memory.limit, oom_kills_before=after + less, oom_kills_after=after
    )
    ev = dataclasses.replace(
        ev,
        signal=signal.SIGKILL,
        exit_code=None,
        requested=None,
        supervisor_lost=False,
        memory=memory,
        kernel_log=tuple(line for line in ev.kernel_log if "out of memory" not in line.lower()),
    )
    d = diagnose(ev)
    assert d is not None and d.cause == "killed"
    assert "SIGKILL" in d.summary and "not out of memory" in d.summary


@TARGETED
@given(evidence(), st.sampled_from(sorted(CRASH_SIGNALS)), st.booleans())
def test_crash_signals_are_crashes_even_in_a_requested_shutdown(
    ev: Evidence, signum: int, requested: bool
) -> None:
    ev = dataclasses.replace(
        ev,
        signal=signum,
        exit_code=None,
        supervisor_lost=False,
        requested="SIGTERM" if requested else None,
    )
    d = diagnose(ev)
    assert d is not None
    if signum in (signal.SIGSEGV, signal.SIGBUS) and ev.fatal:
        assert d.cause in ("native_crash", "stack_overflow")
    else:
        assert d.cause == "native_crash"
    if d.cause == "native_crash":
        assert d.summary.startswith(f"Native crash ({signal_name(signum)})")
    else:
        assert d.summary.startswith("Stack overflow")


@TARGETED
@given(
    evidence(),
    st.sampled_from([signal.SIGSEGV, signal.SIGBUS]),
    _frame,
    st.integers(min_value=50, max_value=110),
    st.lists(_frame, max_size=3),
)
def test_segfault_in_runaway_recursion_is_stack_overflow(
    ev: Evidence, signum: int, recursing: Frame, depth: int, inner: list[Frame]
) -> None:
    # The crashed thread's stack is mostly one function: faulthandler's last 100 frames
    # of a recursion through C code.
    dump = StackDump(
        f"0x{MAIN:016x}", (recursing,) * depth + tuple(inner), True, "Segmentation fault", True
    )
    ev = dataclasses.replace(
        ev, signal=signum, exit_code=None, supervisor_lost=False, fatal=(dump,)
    )
    d = diagnose(ev)
    assert d is not None and d.cause == "stack_overflow"
    assert d.summary.startswith("Stack overflow")
    assert any(f"are {recursing.function}()" in fact for fact in d.evidence)
    assert any("loop" in tip for tip in d.advice)


@TARGETED
@given(
    evidence(),
    st.sampled_from([signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGKILL]),
    st.sampled_from(["SIGTERM", "SIGHUP", "launcher exited"]),
)
def test_a_requested_end_is_not_a_death(ev: Evidence, signum: int, why: str) -> None:
    ev = dataclasses.replace(
        ev, signal=signum, exit_code=None, requested=why, supervisor_lost=False
    )
    assert diagnose(ev) is None
    assert diagnose(dataclasses.replace(ev, signal=None, exit_code=0)) is None


@TARGETED
@given(evidence(), st.booleans())
def test_exit_zero_is_a_death_only_without_exit_handlers_after_start(
    ev: Evidence, clean: bool
) -> None:
    ev = dataclasses.replace(ev, signal=None, exit_code=0, requested=None, supervisor_lost=False)
    ev = dataclasses.replace(ev, clean_exit=clean)
    d = diagnose(ev)
    if clean or not ev.agent_ready:
        assert d is None
    else:
        assert d is not None and d.cause == "exit"
        assert d.summary.startswith("The kernel exited by itself with code 0")


def test_sigkill_with_an_unknown_oom_counter_does_not_rule_out_oom() -> None:
    limit = LIMITS[1]
    at_limit = limit.limit_bytes - MiB
    ev = Evidence(
        kernel_argv=IPYKERNEL_ARGV,
        pid=KERNEL_PID,
        started=1000.0,
        ended=1060.0,
        exit_code=None,
        signal=signal.SIGKILL,
        requested=None,
        agent_ready=True,
        clean_exit=False,
        memory=MemoryEvidence(
            limit=limit,
            timeline=((10.0, 100 * MiB), (59.0, at_limit)),
            peak_bytes=at_limit,
            kernel_peak_bytes=at_limit,
        ),
    )
    d = diagnose(ev)
    assert d is not None
    assert not any("did not change" in fact for fact in d.evidence)
    assert "not out of memory" not in d.summary
