"""The CPU cores this process may run on, for the stages that share their work out over processes."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may use (its affinity where the OS has one, as under a job scheduler's
    limits), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
