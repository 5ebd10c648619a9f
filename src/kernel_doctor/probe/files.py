"""Reading small /proc and /sys files. On the supervisor's start path: imports nothing."""

from __future__ import annotations


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def read_int(path: str) -> int | None:
    text = read_text(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def parse_keyed(text: str | None) -> dict[str, int]:
    """'key value' lines (memory.stat, memory.events, memory.oom_control, meminfo)."""
    values: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2:
            try:
                values[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return values


def keyed(text: str | None, *keys: str) -> list[int | None]:
    """The values of ``keys`` in 'key value' lines, found without parsing the others:
    the supervisor reads memory.stat or meminfo at every sample, and /proc/vmstat's
    ~170 lines at every look while a cell runs (parse_keyed took 150 µs of it, this
    3 µs)."""
    found: list[int | None] = []
    for key in keys:
        value = None
        at = text.find(key) if text else -1
        while text and at != -1:
            end = at + len(key)
            if (at == 0 or text[at - 1] == "\n") and text[end : end + 1] in (" ", ":", "\t"):
                line_end = text.find("\n", end)
                words = text[end : line_end if line_end != -1 else None].lstrip(" :\t").split()
                try:
                    value = int(words[0])
                    break
                except (IndexError, ValueError):
                    pass  # not a value: look further (parse_keyed skips such lines too)
            at = text.find(key, end)
        found.append(value)
    return found


class Reader:
    """A file kept open and re-read from the start: one pread() a sample instead of
    open/read/close, for the files the supervisor reads many times a second."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> str | None:
        import os

        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            return os.pread(self._fd, 65536, 0).decode()
        except (OSError, UnicodeDecodeError):
            self.close()
            return None

    def read_int(self) -> int | None:
        text = self.read()
        try:
            return int(text.strip()) if text is not None else None
        except ValueError:
            return None

    def close(self) -> None:
        import os

        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
