"""Memory-limit probing on fixture trees: a fake procfs and fake cgroup mounts under
tmp_path, whose mountinfo names mount points inside tmp_path. No real cgroup is read
or made here."""

from __future__ import annotations

import os
import select
from pathlib import Path
from typing import Any

import pytest

from kernel_doctor._errors import CgroupUnavailable
from kernel_doctor.probe import create
from kernel_doctor.probe.base import MemorySource, Watch, keyed, parse_keyed, read_int
from kernel_doctor.probe.cgroup import (
    UNLIMITED,
    CgroupV1,
    CgroupV2,
    Mount,
    cgroup_dir,
    parse_mountinfo,
    parse_proc_cgroup,
)
from kernel_doctor.probe.create import ENV_PARENT, LimitedCgroup, make_limited_cgroup
from kernel_doctor.probe.limits import find_memory_source
from kernel_doctor.probe.system import SystemMemory

KiB, MiB, GiB = 1024, 1024**2, 1024**3
V1_UNLIMITED = 9223372036854771712
PID = 4242


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def escape(path: Path | str) -> str:
    """A path as mountinfo writes it (octal escapes for blanks)."""
    return str(path).replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


class Host:
    """A fake machine under ``root``: procfs at root/proc, mounts wherever asked."""

    def __init__(self, root: Path, ram: int = 64 * GiB, swap: int = 0) -> None:
        self.root = root
        self.proc = root / "proc"
        self._mounts = [
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
            "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw",
        ]
        self._cgroup: list[str] = []
        self.meminfo(ram, swap, available=ram // 2)

    def meminfo(self, ram: int, swap: int, available: int) -> None:
        write(
            self.proc / "meminfo",
            f"MemTotal:       {ram // KiB} kB\n"
            f"MemFree:        {available // KiB // 2} kB\n"
            f"MemAvailable:   {available // KiB} kB\n"
            "Buffers:          123456 kB\n"
            f"SwapTotal:      {swap // KiB} kB\n"
            f"SwapFree:       {swap // KiB} kB\n",
        )

    def mount_v2(self, where: str = "sys/fs/cgroup", root: str = "/") -> Path:
        mountpoint = self.root / where
        mountpoint.mkdir(parents=True, exist_ok=True)
        self._mounts.append(
            f"35 24 0:30 {escape(root)} {escape(mountpoint)} "
            "rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
            "rw,nsdelegate,memory_recursiveprot"
        )
        self._write_mounts()
        return mountpoint

    def mount_v1(
        self, where: str = "sys/fs/cgroup/memory", root: str = "/", controllers: str = "memory"
    ) -> Path:
        mountpoint = self.root / where
        mountpoint.mkdir(parents=True, exist_ok=True)
        self._mounts.append(
            f"40 33 0:35 {escape(root)} {escape(mountpoint)} "
            f"rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,{controllers}"
        )
        self._write_mounts()
        return mountpoint

    def _write_mounts(self) -> None:
        write(self.proc / str(PID) / "mountinfo", "\n".join(self._mounts) + "\n")

    def member_of(self, v2: str | None = None, v1: str | None = None) -> None:
        lines = []
        if v1 is not None:
            lines += [
                "12:pids:/user.slice/user-1000.slice",
                f"4:memory:{v1}",
                "3:cpu,cpuacct:/user.slice",
            ]
        if v2 is not None:
            lines.append(f"0::{v2}")
        write(self.proc / str(PID) / "cgroup", "\n".join(lines) + "\n")

    def find(self) -> MemorySource:
        return find_memory_source(PID, proc=str(self.proc))


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


# ------------------------------------------------------------------- parsing


def test_parse_mountinfo_keeps_cgroup2_and_v1_memory_only() -> None:
    text = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "35 24 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n"
        "36 24 0:31 / /sys/fs/cgroup/cpu,cpuacct rw shared:10 - cgroup cgroup rw,cpu,cpuacct\n"
        "37 24 0:32 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory\n"
        "not a mountinfo line\n"
        "38 24 0:33 / /x rw - \n"
    )
    assert parse_mountinfo(text) == [
        Mount(2, "/", "/sys/fs/cgroup/unified"),
        Mount(1, "/", "/sys/fs/cgroup/memory"),
    ]


def test_parse_mountinfo_unescapes_blanks() -> None:
    text = (
        r"35 24 0:30 /docker/my\040box /mnt/my\040cgroup\011tab rw shared:9 - cgroup2 cgroup2 rw"
        "\n"
    )
    assert parse_mountinfo(text) == [Mount(2, "/docker/my box", "/mnt/my cgroup\ttab")]


def test_parse_proc_cgroup() -> None:
    text = "12:pids:/a\n4:memory:/user.slice/x:y\n0::/user.slice/u.scope\nbad line\n"
    assert parse_proc_cgroup(text) == ("/user.slice/x:y", "/user.slice/u.scope")
    assert parse_proc_cgroup("0::/\n") == (None, "/")
    assert parse_proc_cgroup("") == (None, None)


def test_cgroup_dir_strips_a_container_mount_root() -> None:
    host_mount = Mount(2, "/", "/sys/fs/cgroup")
    assert cgroup_dir(host_mount, "/user.slice/a.scope") == "/sys/fs/cgroup/user.slice/a.scope"
    assert cgroup_dir(host_mount, "/") == "/sys/fs/cgroup"
    boxed = Mount(2, "/docker/abc", "/sys/fs/cgroup")
    assert cgroup_dir(boxed, "/docker/abc") == "/sys/fs/cgroup"
    assert cgroup_dir(boxed, "/docker/abc/sub") == "/sys/fs/cgroup/sub"
    # A sibling whose name merely starts with the root is not under it.
    assert cgroup_dir(boxed, "/docker/abcdef") == "/sys/fs/cgroup/docker/abcdef"


def test_parse_keyed_and_read_int(tmp_path: Path) -> None:
    assert parse_keyed("MemTotal:  100 kB\nbad\nx y\noom_kill 3\n") == {
        "MemTotal": 100,
        "oom_kill": 3,
    }
    assert parse_keyed(None) == {}
    text = "total_inactive_file 7\ninactive_file 5\noom_kill max\noom_kill 3\n"
    assert keyed(text, "inactive_file", "oom_kill", "kill", "missing") == [5, 3, None, None]
    assert keyed(None, "oom_kill") == [None]
    assert read_int(str(write(tmp_path / "n", " 42\n"))) == 42
    assert read_int(str(write(tmp_path / "m", "max\n"))) is None
    assert read_int(str(tmp_path / "missing")) is None


# -------------------------------------------------------------------- cgroup v2


def test_v2_numeric_memory_max(host: Host) -> None:
    cg = host.mount_v2()
    leaf = cg / "user.slice" / "kernel.scope"
    write(leaf / "memory.max", f"{512 * MiB}\n")
    write(leaf / "memory.current", f"{300 * MiB}\n")
    write(leaf / "memory.stat", f"anon {200 * MiB}\nfile {100 * MiB}\ninactive_file {40 * MiB}\n")
    write(leaf / "memory.events", "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n")
    write(leaf / "memory.peak", f"{500 * MiB}\n")
    write(cg / "user.slice" / "memory.max", "max\n")
    host.member_of(v2="/user.slice/kernel.scope")

    source = host.find()
    assert isinstance(source, CgroupV2)
    assert source.limit.limit_bytes == 512 * MiB
    assert source.limit.kind == "cgroup-v2"
    assert source.limit.path == str(leaf)
    assert str(leaf) in source.limit.source and "memory.max" in source.limit.source
    assert source.counted() == 260 * MiB  # memory.current less inactive_file
    assert source.oom_kills() == 1
    assert source.peak() == 500 * MiB

    write(leaf / "memory.events", "low 0\nhigh 0\nmax 20\noom 3\noom_kill 2\n")
    assert source.oom_kills() == 2


def test_v2_max_everywhere_is_no_limit(host: Host) -> None:
    cg = host.mount_v2()
    leaf = cg / "user.slice" / "kernel.scope"
    write(leaf / "memory.max", "max\n")
    write(cg / "user.slice" / "memory.max", "max\n")
    host.member_of(v2="/user.slice/kernel.scope")
    source = host.find()
    assert isinstance(source, SystemMemory)
    assert source.limit.limit_bytes == 64 * GiB


def test_v2_limit_on_an_ancestor(host: Host) -> None:
    cg = host.mount_v2()
    slice_ = cg / "user.slice" / "user-1000.slice"
    leaf = slice_ / "jupyter.service" / "kernel.scope"
    write(leaf / "memory.max", "max\n")
    write(slice_ / "jupyter.service" / "memory.max", f"{8 * GiB}\n")
    write(slice_ / "memory.max", f"{3 * GiB}\n")  # the tightest, two levels up
    write(cg / "user.slice" / "memory.max", "max\n")
    write(slice_ / "memory.current", f"{GiB}\n")
    write(slice_ / "memory.stat", f"inactive_file {GiB + 1}\n")
    write(leaf / "memory.current", "1\n")
    host.member_of(v2="/user.slice/user-1000.slice/jupyter.service/kernel.scope")

    source = host.find()
    assert isinstance(source, CgroupV2)
    assert source.limit.limit_bytes == 3 * GiB
    assert source.limit.path == str(slice_)
    # Usage is read where the limit is, and never goes negative.
    assert source.counted() == 0
    assert source.oom_kills() is None  # no memory.events there
    assert source.peak() is None  # kernels before 5.19 have no memory.peak


def test_v2_unreadable_counters_are_none(tmp_path: Path) -> None:
    write(tmp_path / "memory.max", "1000\n")
    source = CgroupV2.probe(str(tmp_path), str(tmp_path))
    assert source is not None
    assert source.counted() is None
    assert source.oom_kills() is None
    assert source.watch([500]) is None  # no memory.events to poll
    source.close()
    write(tmp_path / "memory.current", "garbage\n")
    assert source.counted() is None
    write(tmp_path / "memory.max", "lots\n")
    assert CgroupV2.probe(str(tmp_path), str(tmp_path)) is None


def test_v2_watch_and_drain_memory_events(tmp_path: Path) -> None:
    events = write(tmp_path / "memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    write(tmp_path / "memory.max", f"{GiB}\n")
    source = CgroupV2.probe(str(tmp_path), str(tmp_path))
    assert source is not None
    watch = source.watch([GiB // 2, GiB * 9 // 10])
    assert isinstance(watch, Watch)
    assert watch.events == select.POLLPRI
    os.fstat(watch.fd)  # an open descriptor
    assert os.lseek(watch.fd, 0, os.SEEK_CUR) > 0  # drained once already

    events.write_text("low 0\nhigh 3\nmax 1\noom 1\noom_kill 1\n")
    source.drain()
    source.drain()  # draining twice is harmless
    poller = select.poll()
    poller.register(watch.fd, watch.events)
    poller.poll(0)  # a regular file never blocks; what matters is that it can be polled

    source.close()
    with pytest.raises(OSError):
        os.fstat(watch.fd)
    source.close()  # closing twice is harmless
    source.drain()  # and so is draining a closed source


# -------------------------------------------------------------------- cgroup v1


def test_v1_limit_in_bytes(host: Host) -> None:
    mem = host.mount_v1()
    leaf = mem / "user.slice" / "kernel"
    write(mem / "memory.limit_in_bytes", f"{V1_UNLIMITED}\n")
    write(mem / "user.slice" / "memory.limit_in_bytes", f"{V1_UNLIMITED}\n")
    write(leaf / "memory.limit_in_bytes", f"{GiB}\n")
    write(leaf / "memory.usage_in_bytes", f"{700 * MiB}\n")
    write(
        leaf / "memory.stat",
        f"cache 1000\nrss 1000\ninactive_file {10 * MiB}\n"
        f"hierarchical_memory_limit {GiB}\ntotal_inactive_file {100 * MiB}\n",
    )
    write(leaf / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    write(leaf / "memory.max_usage_in_bytes", f"{900 * MiB}\n")
    host.member_of(v1="/user.slice/kernel")

    source = host.find()
    assert isinstance(source, CgroupV1)
    assert source.limit.limit_bytes == GiB
    assert source.limit.kind == "cgroup-v1"
    assert source.limit.path == str(leaf)
    assert source.counted() == 600 * MiB  # total_inactive_file wins over inactive_file
    assert source.oom_kills() == 4
    assert source.peak() == 900 * MiB


def test_v1_inactive_file_without_total(tmp_path: Path) -> None:
    write(tmp_path / "memory.limit_in_bytes", f"{GiB}\n")
    write(tmp_path / "memory.usage_in_bytes", f"{GiB}\n")
    write(tmp_path / "memory.stat", f"inactive_file {GiB // 4}\n")
    source = CgroupV1.probe(str(tmp_path), str(tmp_path))
    assert source is not None
    assert source.counted() == GiB * 3 // 4
    assert source.oom_kills() is None  # kernels before 4.13 have no oom_kill line


def test_v1_unlimited_value_is_no_limit(host: Host) -> None:
    mem = host.mount_v1()
    leaf = mem / "user.slice" / "kernel"
    for directory in (mem, mem / "user.slice", leaf):
        write(directory / "memory.limit_in_bytes", f"{V1_UNLIMITED}\n")
    write(leaf / "memory.stat", f"hierarchical_memory_limit {V1_UNLIMITED}\n")
    host.member_of(v1="/user.slice/kernel")
    assert V1_UNLIMITED >= UNLIMITED
    assert isinstance(host.find(), SystemMemory)


def test_v1_hierarchical_limit_beats_what_is_visible(host: Host) -> None:
    # A container sees only its own cgroup; a tighter limit above it shows only in
    # memory.stat's hierarchical_memory_limit.
    mem = host.mount_v1(root="/kubepods/pod1/abc")
    write(mem / "memory.limit_in_bytes", f"{4 * GiB}\n")
    write(mem / "memory.usage_in_bytes", f"{GiB}\n")
    write(
        mem / "memory.stat",
        f"hierarchical_memory_limit {2 * GiB}\ntotal_inactive_file {GiB // 2}\n",
    )
    host.member_of(v1="/kubepods/pod1/abc")

    source = host.find()
    assert isinstance(source, CgroupV1)
    assert source.limit.limit_bytes == 2 * GiB
    assert source.limit.path == str(mem)
    assert source.counted() == GiB // 2


def test_v1_hierarchical_limit_alone(tmp_path: Path) -> None:
    write(tmp_path / "memory.limit_in_bytes", f"{V1_UNLIMITED}\n")
    write(tmp_path / "memory.stat", f"hierarchical_memory_limit {300 * MiB}\n")
    source = CgroupV1.probe(str(tmp_path), str(tmp_path))
    assert source is not None and source.limit.limit_bytes == 300 * MiB


def test_v1_watch_registers_eventfds(tmp_path: Path) -> None:
    write(tmp_path / "memory.limit_in_bytes", f"{GiB}\n")
    write(tmp_path / "memory.usage_in_bytes", "0\n")
    write(tmp_path / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n")
    write(tmp_path / "cgroup.event_control", "")
    source = CgroupV1.probe(str(tmp_path), str(tmp_path))
    assert source is not None
    watch = source.watch([GiB // 2])
    if watch is None:
        pytest.skip("no eventfd here")
    assert watch.events == select.POLLIN
    # The last registration written is the OOM notifier: "<eventfd> <oom_control fd>".
    efd, oom_fd = (int(x) for x in (tmp_path / "cgroup.event_control").read_text().split())
    assert efd == watch.fd
    assert os.readlink(f"/proc/self/fd/{oom_fd}") == str(tmp_path / "memory.oom_control")
    source.drain()  # nothing to read: must not raise
    source.close()
    with pytest.raises(OSError):
        os.fstat(watch.fd)


# ------------------------------------------------------------ containers, hybrids


def test_v2_container_with_mount_root(host: Host) -> None:
    # No cgroup namespace: /proc/PID/cgroup names the full path, but only the
    # container's own cgroup is mounted.
    cg = host.mount_v2(root="/docker/abc")
    write(cg / "memory.max", f"{768 * MiB}\n")
    write(cg / "memory.current", f"{100 * MiB}\n")
    host.member_of(v2="/docker/abc")
    source = host.find()
    assert isinstance(source, CgroupV2)
    assert source.limit.limit_bytes == 768 * MiB
    assert source.limit.path == str(cg)
    assert source.counted() == 100 * MiB


def test_v2_container_subgroup_under_mount_root(host: Host) -> None:
    cg = host.mount_v2(root="/docker/abc")
    write(cg / "memory.max", f"{GiB}\n")
    write(cg / "kernels" / "memory.max", "max\n")
    host.member_of(v2="/docker/abc/kernels")
    source = host.find()
    assert isinstance(source, CgroupV2)
    assert source.limit.path == str(cg)  # the ancestor at the mount point counts


def test_mountpoint_with_a_blank(host: Host) -> None:
    cg = host.mount_v2(where="my cgroups/unified")
    write(cg / "k" / "memory.max", f"{GiB}\n")
    host.member_of(v2="/k")
    source = host.find()
    assert isinstance(source, CgroupV2)
    assert source.limit.path == str(cg / "k")


def test_hybrid_v2_without_memory_falls_back_to_v1(host: Host) -> None:
    # systemd's hybrid layout: cgroup2 mounted for process tracking only, memory on v1.
    unified = host.mount_v2(where="sys/fs/cgroup/unified")
    (unified / "user.slice" / "kernel.scope").mkdir(parents=True)
    write(unified / "cgroup.controllers", "")
    host.mount_v1(where="sys/fs/cgroup/cpu,cpuacct", controllers="cpu,cpuacct")
    mem = host.mount_v1()
    leaf = mem / "user.slice" / "kernel.scope"
    write(leaf / "memory.limit_in_bytes", f"{2 * GiB}\n")
    write(mem / "memory.limit_in_bytes", f"{V1_UNLIMITED}\n")
    host.member_of(v2="/user.slice/kernel.scope", v1="/user.slice/kernel.scope")
    source = host.find()
    assert isinstance(source, CgroupV1)
    assert source.limit.limit_bytes == 2 * GiB
    assert source.limit.path == str(leaf)


def test_tightest_of_v1_and_v2(host: Host) -> None:
    v2 = host.mount_v2(where="sys/fs/cgroup/unified")
    write(v2 / "k" / "memory.max", f"{3 * GiB}\n")
    mem = host.mount_v1()
    write(mem / "k" / "memory.limit_in_bytes", f"{2 * GiB}\n")
    host.member_of(v2="/k", v1="/k")
    assert isinstance(host.find(), CgroupV1)
    write(v2 / "k" / "memory.max", f"{GiB}\n")
    assert isinstance(host.find(), CgroupV2)


# ----------------------------------------------------------------- system memory


def test_no_cgroup_is_system_ram_plus_swap(tmp_path: Path) -> None:
    host = Host(tmp_path, ram=16 * GiB, swap=2 * GiB)
    host.member_of()  # an empty /proc/PID/cgroup; no mountinfo at all
    source = host.find()
    assert isinstance(source, SystemMemory)
    assert source.limit.limit_bytes == 18 * GiB
    assert source.limit.kind == "system"
    assert source.limit.path is None
    assert source.counted() == 8 * GiB  # MemTotal - MemAvailable
    assert source.oom_kills() is None  # no vmstat
    write(host.proc / "vmstat", "nr_free_pages 100\noom_kill 7\n")
    assert source.oom_kills() == 7
    assert source.peak() is None
    assert source.watch([GiB]) is None


def test_system_counted_needs_meminfo_fields(tmp_path: Path) -> None:
    write(tmp_path / "meminfo", "MemTotal: 1000 kB\n")
    assert SystemMemory(str(tmp_path)).counted() is None


def test_cgroup_mounted_but_process_not_listed(host: Host) -> None:
    cg = host.mount_v2()
    write(cg / "memory.max", f"{GiB}\n")
    # No /proc/PID/cgroup: nothing tells which cgroup the process is in.
    assert isinstance(host.find(), SystemMemory)


def test_system_smaller_than_cgroup_limit_wins(tmp_path: Path) -> None:
    host = Host(tmp_path, ram=GiB, swap=512 * MiB)
    cg = host.mount_v2()
    write(cg / "k" / "memory.max", f"{8 * GiB}\n")
    host.member_of(v2="/k")
    source = host.find()
    assert isinstance(source, SystemMemory)
    assert source.limit.limit_bytes == GiB + 512 * MiB

    # A v1 limit bigger than the machine loses the same way.
    mem = host.mount_v1()
    write(mem / "k" / "memory.limit_in_bytes", f"{4 * GiB}\n")
    host.member_of(v2="/k", v1="/k")
    assert isinstance(host.find(), SystemMemory)


# ------------------------------------------------------------ make_limited_cgroup


@pytest.fixture
def v2_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A plain directory that looks like a delegated cgroup v2 parent."""
    parent = tmp_path / "parent"
    write(parent / "cgroup.controllers", "cpuset cpu io memory pids\n")
    write(parent / "cgroup.subtree_control", "")
    monkeypatch.setenv(ENV_PARENT, str(parent))
    # Keep systemd-run, the fallback, out of reach.
    empty = tmp_path / "no-tools"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return parent


def test_make_limited_cgroup_on_a_plain_v2_directory(v2_parent: Path) -> None:
    # A plain directory is not cgroupfs: mkdir makes an empty directory, with no
    # cgroup.procs for the kernel to join, so the direct way must fail, and with
    # systemd-run out of reach that is a CgroupUnavailable naming the parent.
    with pytest.raises(CgroupUnavailable) as failure:
        make_limited_cgroup(256 * MiB)
    message = str(failure.value)
    assert message.startswith(f"cannot make a memory cgroup for --memory-limit ({v2_parent}: ")
    assert "run as root, or in a systemd user session" in message
    assert failure.value.exit_code == 2
    # The memory controller was enabled for the parent's children on the way.
    assert (v2_parent / "cgroup.subtree_control").read_text() == "+memory"


class FakeCgroupfs:
    """``os`` for create.py, where a mkdir under ``parent`` behaves like cgroupfs:
    the new directory comes with its interface files, and rmdir removes them and
    refuses (EBUSY) while cgroup.procs lists a process."""

    def __init__(self, parent: Path, v2: bool) -> None:
        self._parent = parent
        self._v2 = v2

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        os.mkdir(path, mode)
        if Path(path).parent != self._parent:
            return
        files = ["cgroup.procs"]
        if self._v2:
            files += ["memory.max", "memory.swap.max", "memory.current", "memory.events"]
        else:
            files += ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        for name in files:
            write(Path(path, name), "max\n" if name.endswith("max") else "")

    def rmdir(self, path: str) -> None:
        directory = Path(path)
        if directory.parent == self._parent and directory.is_dir():
            if (directory / "cgroup.procs").read_text().strip():
                raise OSError(16, "Device or resource busy")
            for child in directory.iterdir():
                child.unlink()
        os.rmdir(path)


def test_make_limited_cgroup_v2_as_the_kernel_would(
    v2_parent: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(create, "os", FakeCgroupfs(v2_parent, v2=True))
    cgroup = make_limited_cgroup(256 * MiB)
    assert isinstance(cgroup, LimitedCgroup)
    assert cgroup.limit_bytes == 256 * MiB
    assert cgroup.command_prefix == []
    assert cgroup.path is not None
    path = Path(cgroup.path)
    assert path.parent == v2_parent
    assert path.name.startswith(f"kernel-doctor-{os.getpid()}-")
    assert (path / "memory.max").read_text() == str(256 * MiB)
    assert (path / "memory.swap.max").read_text() == "0"  # swap must not stretch it
    assert (v2_parent / "cgroup.subtree_control").read_text() == "+memory"

    # Two cgroups in one process get different names.
    other = make_limited_cgroup(MiB)
    assert other.path != cgroup.path
    other.remove()

    # remove() waits for the kernel's processes to go, then removes the cgroup.
    (path / "cgroup.procs").write_text("12345\n")
    cgroup.remove(timeout=0.1)
    assert path.is_dir()
    (path / "cgroup.procs").write_text("")
    cgroup.remove()
    assert not path.exists()
    cgroup.remove()  # already gone: nothing to do


def test_make_limited_cgroup_v2_keeps_an_enabled_controller(
    v2_parent: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (v2_parent / "cgroup.subtree_control").write_text("cpu memory\n")
    monkeypatch.setattr(create, "os", FakeCgroupfs(v2_parent, v2=True))
    cgroup = make_limited_cgroup(GiB)
    assert (v2_parent / "cgroup.subtree_control").read_text() == "cpu memory\n"
    cgroup.remove()


def test_make_limited_cgroup_v1_as_the_kernel_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = tmp_path / "memory-parent"
    parent.mkdir()
    monkeypatch.setenv(ENV_PARENT, str(parent))
    monkeypatch.setattr(create, "os", FakeCgroupfs(parent, v2=False))
    cgroup = make_limited_cgroup(300 * MiB)
    assert cgroup.path is not None
    path = Path(cgroup.path)
    assert (path / "memory.limit_in_bytes").read_text() == str(300 * MiB)
    assert (path / "memory.memsw.limit_in_bytes").read_text() == str(300 * MiB)
    cgroup.remove()
    assert not path.exists()


def test_limited_cgroup_without_a_path() -> None:
    scope = LimitedCgroup(GiB, command_prefix=["systemd-run", "--user", "--scope", "--"])
    scope.remove()  # nothing to remove
