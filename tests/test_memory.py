"""benchmarks.memory: the peak resident set of a stage, above its starting level."""

from __future__ import annotations

import numpy as np

from benchmarks.memory import PeakResident, resident_bytes


def test_peak_sees_a_transient_allocation_and_not_an_idle_stage():
    with PeakResident() as idle:
        sum(range(1000))
    with PeakResident() as busy:
        block = np.ones(256 * 2**20 // 8)  # 256 MB, touched
        del block  # freed before the stage ends: only sampling can see it
    assert busy.extra_mb > 200, busy.extra_mb
    assert idle.extra_mb < 50, idle.extra_mb
    assert busy.baseline_mb * 2**20 <= resident_bytes() + 300 * 2**20
