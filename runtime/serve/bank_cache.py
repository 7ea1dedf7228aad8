"""`BankCache`: support banks by id, least recently used first out, bounded by bytes.

A bank is large (about 90 MB per shot at SD 2.1 size in fp32, a few MB for the synth model), so
the bound is bytes, not entries. Thread-safe: the server's model instances share one cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from runtime.fewshot import SupportBank


def bank_bytes(bank: SupportBank) -> int:
    """The host memory `bank` holds (what the cache counts): its arrays and the backend's copy of them."""
    return bank.host_bytes or sum(a.nbytes for a in bank.arrays.values())


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    capacity_bytes: int
    hits: int
    misses: int
    evictions: int


class BankCache:
    """LRU of `SupportBank`s keyed by support id, holding at most `capacity_bytes`."""

    def __init__(self, capacity_bytes: int):
        if capacity_bytes <= 0:
            raise ValueError(f"the bank cache needs a positive size, got {capacity_bytes} bytes")
        self.capacity_bytes = int(capacity_bytes)
        self._banks: OrderedDict[str, tuple[SupportBank, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = self._hits = self._misses = self._evictions = 0

    def get(self, key: str) -> SupportBank | None:
        """The bank under `key` (now the most recently used), or None."""
        with self._lock:
            entry = self._banks.get(key)
            if entry is None:
                self._misses += 1
                return None
            self._banks.move_to_end(key)
            self._hits += 1
            return entry[0]

    def check_fits(self, bank: SupportBank) -> None:
        """Raises ValueError when `bank` alone is larger than the whole cache."""
        size = bank_bytes(bank)
        if size > self.capacity_bytes:
            raise ValueError(
                f"the support bank takes {size / 2**20:.1f} MB, more than the whole bank cache "
                f"({self.capacity_bytes / 2**20:.1f} MB); start the server with a larger --bank-cache-mb"
            )

    def put(self, key: str, bank: SupportBank) -> None:
        """Adds `bank`, evicting the least recently used ones until it fits.

        Raises ValueError when the bank alone is larger than the cache.
        """
        self.check_fits(bank)
        size = bank_bytes(bank)
        with self._lock:
            old = self._banks.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            while self._banks and self._bytes + size > self.capacity_bytes:
                _, (_, evicted) = self._banks.popitem(last=False)
                self._bytes -= evicted
                self._evictions += 1
            self._banks[key] = (bank, size)
            self._bytes += size

    def peek(self, key: str) -> SupportBank | None:
        """`get` without counting a hit or a miss or changing the order (a second look under a lock)."""
        with self._lock:
            entry = self._banks.get(key)
            return None if entry is None else entry[0]

    def __contains__(self, key: str) -> bool:  # a peek too
        with self._lock:
            return key in self._banks

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                len(self._banks), self._bytes, self.capacity_bytes, self._hits, self._misses, self._evictions
            )
