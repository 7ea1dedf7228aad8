"""What every backend's graph shares: feeds and resident inputs checked once against the descriptor, per-call states.

    bank = graph.upload({"key_00": ..., ...})     # checked, placed once where the graph reads it
    mask = graph.run({"image": ..., "threshold": ...}, resident=bank)[0]

A backend subclasses `Graph` and implements `_place` (put checked arrays where it reads them)
and `_run` (one inference on a checked feed); the checks live here only, so no backend can
skip one. Backends whose execution state is not thread-safe (OpenVINO infer requests, TensorRT
execution contexts) hand each concurrent call its own from a `RequestPool`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from runtime.contract import GraphSpec


def check_threads(threads: Any) -> int | None:
    """`threads` as given to a backend: None (the backend's default) or a positive int."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None (the backend's default), got {threads!r}")
    return threads


def check_input_names(spec: GraphSpec, path, names: list[str]) -> None:
    """Raises ValueError when a loaded graph's inputs are not the descriptor's, in its order."""
    if names != spec.input_names:
        raise ValueError(f"{path}: graph inputs {names} do not match the manifest's {spec.input_names}")


class Graph:
    """One graph of an engine directory on some backend; thread-safe `run`.

    Attributes:
        spec: the graph's descriptor (from the manifest).
    """

    spec: GraphSpec

    def upload(self, arrays: dict[str, np.ndarray]) -> dict:
        """Checks `arrays` (some of the graph's inputs) and places them where the graph reads them, once.

        Returns the resident inputs for `run(..., resident=)` (device memory on a GPU).
        """
        specs = {t.name: t for t in self.spec.inputs}
        for name, array in arrays.items():
            if name not in specs:
                raise ValueError(f"{self.spec.name}: no input named {name!r}")
            specs[name].check(array, self.spec.name)
        return self._place({name: np.ascontiguousarray(array) for name, array in arrays.items()})

    def run(self, feed: dict[str, np.ndarray], resident: dict | None = None) -> list[np.ndarray]:
        """Outputs (host numpy arrays, the descriptor's order) for `feed` plus the `resident` inputs from `upload`."""
        resident = resident or {}
        names = list(feed) + list(resident)
        missing = [n for n in self.spec.input_names if n not in names]
        extra = sorted({n for n in names if n not in self.spec.input_names or names.count(n) > 1})
        if missing or extra:
            raise ValueError(f"{self.spec.name}: inputs missing {missing}, unknown or given twice {extra}")
        specs = {t.name: t for t in self.spec.inputs}
        for name, array in feed.items():
            specs[name].check(np.asarray(array), self.spec.name)
        return self._run({name: np.asarray(array, order="C") for name, array in feed.items()}, resident)

    def resident_host_bytes(self, resident: dict) -> int:
        """Host memory `upload` took beyond the arrays themselves (a copy; 0 where it shares or uses a device)."""
        return 0

    def _place(self, arrays: dict[str, np.ndarray]) -> dict:
        raise NotImplementedError

    def _run(self, feed: dict[str, np.ndarray], resident: dict) -> list[np.ndarray]:
        raise NotImplementedError


class RequestPool:
    """Idle per-call execution states (OpenVINO infer requests, TensorRT contexts) of one compiled graph.

    A caller takes an idle one, or a new one when all are busy, so concurrent calls never share
    one; it goes back to the pool only when the call succeeded. The lock guards the idle list
    only: inference itself runs outside it. The pool holds as many states as calls ever ran at once.
    """

    def __init__(self, create: Callable[[], Any]):
        self._create = create
        self._idle: list = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[Any]:
        with self._lock:
            state = self._idle.pop() if self._idle else None
        if state is None:
            state = self._create()
        yield state  # an exception propagates and the state is dropped: its tensors and shapes are unknown
        with self._lock:
            self._idle.append(state)
