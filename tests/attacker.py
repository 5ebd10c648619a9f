"""What another local user does to turn kernel-doctor against its users: a script run
as that unprivileged user by ``test_shared_machine.py`` (as ``python -I -c SOURCE
COMMAND ARGS…``, so it needs nothing but the standard library and read access to
nothing of the test's).

Commands (JSON arguments, JSON on stdout):

``whoami``                 the uid, gid and groups it runs with.
``plant OPS``              make files, each really this user's: ``["mkdir", path, mode]``,
                           ``["fifo", path]``, ``["symlink", target, path]``,
                           ``["session", folder, options]`` (a fake session: see
                           ``plant_session``).
``fake-supervisor ARGS…``  a process whose command line says ``kernel_doctor`` and whose
                           child stands for its kernel; prints ``{pid, kernel_pid,
                           ticks, started}`` (its start time as /proc has it) and stays.
``plain-kernel FOLDER``     a process that looks like a plain ipykernel whose connection
                           file (in FOLDER) is named with ``EVIL``; prints ``{pid}``.
``respond FIFO LOG``       answers every ``where NONCE`` written to the FIFO with a
                           look full of escape sequences; logs what it read.
``try OPS``                ``["read" | "listdir" | "open-write", path]`` or
                           ``["rename", src, dst]``: each one's outcome.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import time
from typing import Any

# The fake's notebook name and the text of its answers: HTML and terminal escapes.
EVIL = "<img src=x onerror=alert(1)>\x1b[31mEVIL"
# Absurd memory figures: digits that appear nowhere else.
FAKE_LIMIT = 7_777_777_777_777_777
FAKE_USED = 6_666_666_666_666_666

# The session files' formats, as a user learns them from their own sessions.
STATE_SIZE = 8192
STATE_HEADER = struct.Struct("<4sII")
SAMPLE = struct.Struct("<dqq")


def start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def start_epoch(pid: int) -> float:
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return btime + start_ticks(pid) / os.sysconf("SC_CLK_TCK")


def state_bytes(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload).encode()
    record = STATE_HEADER.pack(b"KDS1", 2, len(data)) + data
    return record + b"\0" * (STATE_SIZE - len(record))


def plant_session(folder: str, options: dict[str, Any]) -> None:
    """A fake session folder: ``meta`` (a dict, written as meta.json), a busy state,
    a flight record and memory samples with ``EVIL`` and absurd figures. ``fifos``:
    names planted as FIFOs instead (no one ever writes them: a blocking open of one
    hangs). ``control``: ``"fifo"``, or ``"symlink"`` to ``target``."""
    if not os.path.isdir(folder):
        os.mkdir(folder, 0o700)
    now = time.time()
    kernel_pid = options.get("kernel_pid") or 1
    files = {
        "meta.json": json.dumps(options["meta"]).encode() if options.get("meta") else None,
        "state": state_bytes(
            {"busy": True, "seq": 1, "started": now - 60, "t": now, "line": 1, "pid": kernel_pid}
        ),
        "cells.jsonl": (
            json.dumps(
                {"event": "start", "seq": 1, "execution_count": 1, "t": now - 60, "source": EVIL}
            )
            + "\n"
        ).encode(),
        "samples.bin": b"".join(SAMPLE.pack(float(i), FAKE_USED, FAKE_USED) for i in range(1, 4)),
        "events.jsonl": (json.dumps({"event": "start", "t": now - 60}) + "\n").encode(),
        "interrupt.json": json.dumps({"seq": 1, "summary": EVIL, "busy": True}).encode(),
    }
    fifos = set(options.get("fifos") or ())
    for name, data in files.items():
        path = os.path.join(folder, name)
        if name in fifos:
            os.mkfifo(path, 0o666)
        elif data is not None:
            with open(path, "wb") as f:
                f.write(data)
    control = options.get("control")
    path = os.path.join(folder, "control")
    if control == "fifo":
        os.mkfifo(path, 0o666)
    elif control == "symlink":
        os.symlink(options["target"], path)


def plant(ops: list[list[Any]]) -> None:
    for op in ops:
        kind = op[0]
        if kind == "mkdir":
            os.mkdir(op[1])
            os.chmod(op[1], op[2])
        elif kind == "fifo":
            os.mkfifo(op[1], 0o666)
        elif kind == "symlink":
            os.symlink(op[1], op[2])
        elif kind == "session":
            plant_session(op[1], op[2])
        else:
            raise ValueError(f"unknown op {kind!r}")


def fake_supervisor() -> None:
    """Stands in for a supervisor: its argv has ``kernel_doctor``, its child (the
    "kernel") is its own, and it reports its start time so a fake meta can match it."""
    kernel = subprocess.Popen(["sleep", "3600"])
    me = os.getpid()
    print(
        json.dumps(
            {
                "pid": me,
                "kernel_pid": kernel.pid,
                "ticks": start_ticks(me),
                "started": start_epoch(me),
            }
        ),
        flush=True,
    )
    kernel.wait()


def plain_kernel(folder: str) -> None:
    """Becomes a process that looks like a plain ipykernel (``ipykernel`` among its
    first arguments) whose connection file is named ``EVIL``: what ``top`` lists."""
    print(json.dumps({"pid": os.getpid()}), flush=True)
    code = "import time  # ipykernel_launcher\nwhile True: time.sleep(60)"
    connection = os.path.join(folder, EVIL.replace("/", "") + ".json")
    os.execv(sys.executable, [sys.executable, "-c", code, "-f", connection])


def evil_look(nonce: str) -> dict[str, Any]:
    frame = ["/srv/" + EVIL + ".py", 1, EVIL, EVIL]
    return {
        "nonce": nonce,
        "kernel_pid": 1,
        "busy": True,
        "seq": 1,
        "line": 1,
        "label": EVIL,
        "summary": EVIL,
        "verdict": EVIL,
        "cell": {"execution_count": 1, "source": EVIL},
        "python": [{"main": True, "name": EVIL, "native_id": 1, "frames": [frame]}],
        "main_dump": [frame],
        "os_threads": [{"tid": 1, "verdict": EVIL}],
    }


def respond(fifo: str, log: str) -> None:
    """Read the control FIFO (kept open for writing too, so it never reads end of
    file); answer each request the way a supervisor would, with ``evil_look``."""
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    folder = os.path.dirname(fifo)
    print(json.dumps({"pid": os.getpid()}), flush=True)
    pending = b""
    while True:
        select.select([fd], [], [], 1.0)
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            continue
        with open(log, "ab") as f:
            f.write(data)
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            words = line.decode(errors="replace").split()
            if len(words) == 2 and words[0] == "where":
                reply = os.path.join(folder, f"where-{words[1]}.json")
                with open(reply + ".tmp", "w") as f:
                    json.dump(evil_look(words[1]), f)
                os.replace(reply + ".tmp", reply)


def attempt(op: list[str]) -> dict[str, Any]:
    kind = op[0]
    try:
        if kind == "read":
            with open(op[1], "rb") as f:
                f.read(1)
        elif kind == "listdir":
            os.listdir(op[1])
        elif kind == "open-write":
            os.close(os.open(op[1], os.O_WRONLY | os.O_NONBLOCK))
        elif kind == "rename":
            os.rename(op[1], op[2])
        else:
            raise ValueError(f"unknown op {kind!r}")
    except OSError as exc:
        return {"op": op, "ok": False, "error": type(exc).__name__, "errno": exc.errno}
    return {"op": op, "ok": True}


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "whoami":
        print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}))
    elif command == "plant":
        plant(json.loads(args[0]))
    elif command == "fake-supervisor":
        fake_supervisor()
    elif command == "plain-kernel":
        plain_kernel(args[0])
    elif command == "respond":
        respond(args[0], args[1])
    elif command == "try":
        print(json.dumps([attempt(op) for op in json.loads(args[0])]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
