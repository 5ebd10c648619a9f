"""pytest's JUnit XML read back as node ids and outcomes: for the VM harness
(tests/vm/run.py) and the upstream suites (tests/upstream/run.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CaseResult:
    test: str  # pytest's node id, rebuilt from the JUnit classname and name
    outcome: str  # "passed" | "failed" | "error" | "skipped"
    seconds: float
    message: str = ""  # the failure's one-line message
    details: str = ""  # its traceback, where JUnit has one


def read_junit(path: Path, source: Path) -> list[CaseResult]:
    """Every test case in ``path``, in order; ``source`` is the folder pytest ran in.
    Unreadable or missing XML reads as no cases."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    cases = []
    for case in root.iter("testcase"):
        test = node_id(source, case.get("classname", ""), case.get("name", ""))
        outcome, message, details = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message, details = found.get("message", ""), found.text or ""
                break
        cases.append(CaseResult(test, outcome, float(case.get("time", 0) or 0), message, details))
    return cases


def node_id(source: Path, classname: str, name: str) -> str:
    """JUnit's "tests.test_x" or "tests.test_x.TestClass" and a name as pytest's id:
    the module's path (the longest prefix that is a file under ``source``), then its
    classes."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        module = "/".join(parts[:cut]) + ".py"
        if (source / module).is_file():
            return "::".join([module, *parts[cut:], name])
    return "::".join(part for part in (classname, name) if part)
