"""Copy the kernel's stderr to ours and keep its tail, never blocking the kernel."""

from __future__ import annotations

import collections
import os
import threading

from ..agent.private import write_atomic

TAIL_BYTES = 64 * 1024
# How much not-yet-written output we hold for a slow stderr before dropping the
# oldest: the kernel must never wait on whoever reads our stderr.
BACKLOG_BYTES = 1024 * 1024


class StderrTee:
    def __init__(self, read_fd: int, out_fd: int = 2, log_path: str | None = None) -> None:
        self._read_fd = read_fd
        self._out_fd = out_fd
        self._tail = bytearray()
        self._backlog: collections.deque[bytes] = collections.deque()
        self._backlog_size = 0
        self._dropped = 0
        self._cond = threading.Condition()
        self._eof = False
        self._read_total = 0
        self._log = log_path
        self._saved = 0  # bytes read when the tail was last saved
        self._reader = threading.Thread(target=self._read, name="stderr-reader", daemon=True)
        self._writer = threading.Thread(target=self._write, name="stderr-writer", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._tail += chunk
                self._read_total += len(chunk)
                if len(self._tail) > TAIL_BYTES:
                    del self._tail[: len(self._tail) - TAIL_BYTES]
                self._backlog.append(chunk)
                self._backlog_size += len(chunk)
                while self._backlog_size > BACKLOG_BYTES:
                    self._backlog_size -= len(self._backlog.popleft())
                    self._dropped += 1
                self._cond.notify_all()

    def _write(self) -> None:
        while True:
            with self._cond:
                while not self._backlog and not self._eof:
                    self._cond.wait()
                if not self._backlog and self._eof:
                    return
                chunk = self._backlog.popleft()
                self._backlog_size -= len(chunk)
            view = memoryview(chunk)
            while view:
                try:
                    written = os.write(self._out_fd, view)
                except InterruptedError:
                    continue
                except OSError:
                    break  # our stderr is gone; the tail is still kept
                view = view[written:]

    def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for what the kernel wrote to be read and copied.

        The pipe may never reach EOF: the kernel's children inherit its stderr."""
        self._reader.join(timeout)
        with self._cond:
            self._cond.wait_for(lambda: not self._backlog, timeout)

    def hand_off(self) -> None:
        """Before we exit: if the kernel's children still hold its stderr, leave a small
        process behind that keeps passing it on until they close it, so they never get
        SIGPIPE for writing to a pipe nobody reads (without us they would write to our
        stderr directly). It stays in our process group, so group signals reach it."""
        with self._cond:
            if self._eof:
                return
        if os.fork() != 0:
            return
        try:  # the child: only this thread exists here; plain reads and writes
            while True:
                chunk = os.read(self._read_fd, 65536)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._out_fd, view) :]
        finally:
            os._exit(0)

    def tail(self) -> str:
        with self._cond:
            return self._tail.decode(errors="replace")

    def save(self, *, if_changed: bool = False) -> None:
        """Write the tail to the session, so it outlives a supervisor that is killed."""
        if if_changed and self._read_total == self._saved:
            return
        self._saved = self._read_total
        if self._log:
            try:
                write_atomic(self._log, bytes(self._tail))  # 0600, never through a symlink
            except OSError:
                pass
