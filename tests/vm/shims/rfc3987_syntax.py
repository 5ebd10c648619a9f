"""Stands in for rfc3987-syntax inside the VM guest only (guest.py puts this folder
first on PYTHONPATH). jsonschema imports it, if installed, whenever nbformat is
imported, and it builds its grammar as it loads: 2 s on the host, over a minute under
QEMU's TCG, paid by pytest and by every ``kernel-doctor run`` in the guest. Nothing
tested needs jsonschema's "iri" format, which is all it provides."""

raise ImportError("rfc3987_syntax is left out inside the VM guest (tests/vm/shims)")
