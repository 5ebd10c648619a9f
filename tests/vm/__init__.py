"""The VM harness: real cgroup v2 in a QEMU guest (see run.py)."""
