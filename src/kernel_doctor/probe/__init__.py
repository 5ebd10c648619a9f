"""Reading the machine: memory limits and what they count, processes, kernel logs.

Everything here reads /proc and /sys directly (cheaper than psutil on the
supervisor's start path) and takes its roots as arguments, so the same code runs
on fixture trees in tests.
"""
