"""``%doctor``: kernel-doctor from inside the notebook.

    %doctor deaths           the stored death reports, newest first
    %doctor show [ID]        one report (default: the latest)

Standard library and IPython only, like the rest of the agent.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .layout import ENV_REPORTS

USAGE = "usage: %doctor deaths | %doctor show [ID]"


def reports_dir() -> str | None:
    directory = os.environ.get(ENV_REPORTS)
    if directory:
        return directory
    try:  # loaded by hand: jupyter_core comes with every ipykernel
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:
        return None
    base = os.environ.get("JUPYTER_RUNTIME_DIR") or jupyter_runtime_dir()
    return os.path.join(base, "kernel-doctor", "reports")


def _reports(directory: str) -> list[dict[str, Any]]:
    try:
        names = sorted(
            (n for n in os.listdir(directory) if n.endswith(".json") and n[0] != "."),
            reverse=True,
        )
    except OSError:
        return []
    out = []
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            continue
    return out


def doctor(line: str) -> None:
    words = line.split()
    directory = reports_dir()
    if not words or words[0] not in ("deaths", "show"):
        print(USAGE)
        return
    reports = _reports(directory) if directory else []
    if words[0] == "deaths":
        if not reports:
            print(f"No kernel deaths recorded (in {directory}).")
        for r in reports[:20]:
            ended = (r.get("kernel") or {}).get("ended")
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(ended)) if ended else "?"
            print(f"{r.get('id')}  {when}  {r.get('cause')}: {r.get('summary')}")
        return
    wanted = words[1] if len(words) > 1 and words[1] != "latest" else None
    chosen = next((r for r in reports if wanted in (None, r.get("id"))), None)
    if chosen is None:
        print(f"No report {wanted or 'stored'}: `%doctor deaths` lists them.")
        return
    print(chosen.get("summary"))
    for fact in chosen.get("evidence") or []:
        print(f"  • {fact}")
    for tip in chosen.get("advice") or []:
        print(f"  → {tip}")
    frames = chosen.get("stack") or []
    if frames:
        print("Stack (innermost last):")
        for f in frames[-10:]:
            print(f"  {f.get('file')}:{f.get('line')} in {f.get('function')}")


def register(shell: Any) -> None:
    shell.register_magic_function(doctor, magic_kind="line", magic_name="doctor")
