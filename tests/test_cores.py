"""The cores a stage shares its work over: the process's affinity, not the machine's count."""

from __future__ import annotations

import os

import pytest

from socmap.cores import usable_cores


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_usable_cores_follow_the_affinity_of_the_process():
    before = os.sched_getaffinity(0)
    assert usable_cores() == len(before) and 1 <= usable_cores() <= (os.cpu_count() or 1)
    try:
        os.sched_setaffinity(0, {min(before)})  # as a job scheduler limits a job to one core
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, before)
