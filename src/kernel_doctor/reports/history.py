"""Stored reports: finding, listing and loading them."""

from __future__ import annotations

import json
import os
from typing import Any

from .._errors import UsageError
from .store import reports_dir


def _paths() -> list[str]:
    try:
        directory = reports_dir()
        names = [n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith(".")]
    except OSError:
        return []
    return sorted((os.path.join(directory, n) for n in names), reverse=True)


def find_report(name: str) -> str | None:
    paths = _paths()
    if name == "latest":
        return paths[0] if paths else None
    for path in paths:
        if os.path.basename(path)[: -len(".json")] == name:
            return path
    return None


def load_report(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read report {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise UsageError(f"cannot read report {path}: not a report")
    return value


def list_reports() -> list[dict[str, Any]]:
    out = []
    for path in _paths():
        try:
            out.append(load_report(path))
        except UsageError:
            continue
    return out
