"""Stored reports: finding, listing and loading them."""

from __future__ import annotations

import json
import os
from typing import Any

from .._errors import UsageError
from .store import reports_dir


def report_paths() -> list[str]:
    """Every stored report's path, newest first."""
    try:
        directory = reports_dir()
        names = [n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith(".")]
    except OSError:
        return []
    return sorted((os.path.join(directory, n) for n in names), reverse=True)


def find_report(name: str) -> str | None:
    paths = report_paths()
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
    for path in report_paths():
        try:
            out.append(load_report(path))
        except UsageError:
            continue
    return out


def new_reports(seen: set[str]) -> list[dict[str, Any]]:
    """The stored reports whose paths are not in ``seen`` (which they are added to):
    for views that refresh, so each report is read once, not at every refresh."""
    out = []
    for path in report_paths():
        if path in seen:
            continue
        seen.add(path)
        try:
            out.append(load_report(path))
        except UsageError:
            continue
    return out
