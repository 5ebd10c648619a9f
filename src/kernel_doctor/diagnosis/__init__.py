"""From evidence to a diagnosis: what killed the kernel, where, and what to do."""

from .causes import Diagnosis, diagnose

__all__ = ["Diagnosis", "diagnose"]
