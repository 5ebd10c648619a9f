"""``kernel-doctor status``: which kernelspecs are supervised, where, and whether the
agent loads in each (found by trying each Python, so it takes a moment); and whether a
Jupyter Server started here supervises every kernel, whatever kernelspec is picked."""

from __future__ import annotations

import argparse
import json
import sys


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from .. import kernelspecs
    from ..provisioner import NAME
    from ..server.setting import ServerSetting, read_setting

    try:
        setting: ServerSetting | None = read_setting()
    except Exception as exc:  # the kernelspecs' status is still worth printing
        sys.stderr.write(f"kernel-doctor: cannot read the Jupyter Server's config ({exc})\n")
        setting = None
    every = setting is not None and setting.supervises_every_kernel
    rows = []
    for spec in kernelspecs.all_specs():
        state = kernelspecs.check(spec)
        if not spec.supervised and every:
            # The server's provisioner wraps it, unless the spec names another one.
            if spec.provisioner in (None, NAME):
                state = "supervised when a Jupyter Server starts it (the server's setting)"
            else:
                state = f"not supervised (it names the provisioner {spec.provisioner!r})"
        rows.append(
            {
                "name": spec.name,
                "display_name": spec.display_name,
                "supervised": spec.supervised,
                "twin_of": spec.twin_of,
                "resource_dir": spec.resource_dir,
                "provisioner": spec.provisioner,
                "state": state,
            }
        )
    if args.json:
        server = setting.as_dict() if setting is not None else None
        document = {"kernelspecs": rows, "server": server}
        sys.stdout.write(json.dumps(document, indent=1) + "\n")
        return 0
    if not rows:
        sys.stdout.write("no kernelspecs found\n")
    for row in rows:
        twin = f" (twin of {row['twin_of']})" if row["twin_of"] else ""
        sys.stdout.write(f"{row['name']}{twin}: {row['state']}\n    {row['resource_dir']}\n")
    if setting is not None:
        sys.stdout.write("\n" + setting.describe() + "\n")
    if not every and not any(row["supervised"] for row in rows):
        sys.stdout.write("\nnone is supervised: `kernel-doctor install` adds a twin of python3\n")
    return 0
