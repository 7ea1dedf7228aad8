"""Peak memory of a benchmark stage: this process's resident set, sampled in a thread while the stage runs.

    with PeakResident() as peak:
        stage()
    peak.extra_mb      # the highest resident set seen, minus the level when the stage began

The stage's working memory (activations, workspace, outputs) shows as `extra_mb`; weights loaded
before the stage are in `baseline_mb`. Before the baseline is read, glibc is asked to return freed
heap pages to the system (`malloc_trim`), so memory an earlier stage freed is not mistaken for
headroom. Sampling every millisecond can miss a spike shorter than that; the figures are the
resident set, not allocations, so they are what the machine must provide.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


class PeakResident:
    """Context manager measuring the peak resident set above its level at entry, in MB."""

    def __init__(self, interval_s: float = 0.001):
        self.interval_s = interval_s
        self.baseline_mb = self.extra_mb = 0.0

    def __enter__(self) -> PeakResident:
        _trim_heap()
        self._baseline = self._peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, resident_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc) -> None:
        self._peak = max(self._peak, resident_bytes())
        self._stop.set()
        self._thread.join()
        self.baseline_mb = self._baseline / 2**20
        self.extra_mb = max(0.0, (self._peak - self._baseline) / 2**20)
