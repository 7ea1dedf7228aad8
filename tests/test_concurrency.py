"""One segmenter shared by many threads: each caller its own answer, the same answer every time, failures leave no trace.

On the tiny-random engines, for every CPU backend this machine has (openvino-bf16 where the CPU has bf16).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from runtime.backends import cpu_has_bf16
from runtime.fewshot import FewShotSegmenter
from segdata.episodes import EpisodeSampler
from segdata.synthetic import SyntheticFewShot
from segdata.world import SyntheticWorld

CPU_BACKENDS = ["onnxruntime", "openvino"] + (["openvino-bf16"] if cpu_has_bf16() else [])
THREADS, QUERIES = 8, 50


@pytest.fixture(scope="module")
def query_episodes():
    """Six 2-shot episodes of another world seed: enough query images for QUERIES distinct queries."""
    source = SyntheticFewShot(SyntheticWorld(resolution=64, seed=5), fold=0, split="val", size=120)
    return list(EpisodeSampler(source, 2).fixed_episodes(6, seed=2))


def _queries(query_episodes) -> list[np.ndarray]:
    """QUERIES distinct queries: the query_episodes' query images at several crops (several sizes)."""
    crops = [(64, 64), (48, 64), (64, 40), (56, 56), (40, 48), (64, 52), (36, 60), (50, 50), (60, 44)]
    images = [ep.query_image[:h, :w] for ep in query_episodes for h, w in crops]
    return [np.ascontiguousarray(im) for im in images[:QUERIES]]


def _support(ep):
    return ep.support_images, [m.astype(np.uint8) for m in ep.support_masks]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_eight_threads_get_the_serial_masks_exactly(built, query_episodes, backend):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines, backend=backend, threads=2)
    segmenter.set_support(*_support(query_episodes[0]))
    queries = _queries(query_episodes)
    serial = [segmenter.segment(q) for q in queries]
    assert len({m.tobytes() for m in serial}) > QUERIES // 2  # distinct answers, so a mix-up would show
    start = threading.Barrier(THREADS, timeout=60)

    def worker(offset: int) -> list[tuple[int, np.ndarray]]:
        start.wait()  # all threads inside segment() together
        order = [(offset + i) % QUERIES for i in range(QUERIES)]
        return [(i, segmenter.segment(queries[i])) for i in order]

    with ThreadPoolExecutor(THREADS) as pool:
        offsets = [k * QUERIES // THREADS for k in range(THREADS)]  # one per thread: the barrier waits for all
        results = [r for rows in pool.map(worker, offsets) for r in rows]
    assert len(results) == THREADS * QUERIES
    for i, mask in results:
        np.testing.assert_array_equal(mask, serial[i])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_set_support_racing_segment_gives_old_or_new_bank_never_a_mix(built, query_episodes, backend):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines, backend=backend)
    queries = _queries(query_episodes)
    per_bank = []
    for ep in query_episodes[:2]:
        segmenter.set_support(*_support(ep))
        per_bank.append([segmenter.segment(q) for q in queries])
    # A query the two banks answer differently (random tiny weights answer many queries alike).
    pick = next(i for i in range(QUERIES) if not np.array_equal(per_bank[0][i], per_bank[1][i]))
    query, answers = queries[pick], [per_bank[0][pick], per_bank[1][pick]]
    stop = threading.Event()

    def swap_supports():
        for k in range(12):
            segmenter.set_support(*_support(query_episodes[k % 2]))
        stop.set()

    def query_until_stopped() -> list[np.ndarray]:
        masks = []
        while not stop.is_set() or not masks:
            masks.append(segmenter.segment(query))
        return masks

    with ThreadPoolExecutor(4) as pool:
        swapper = pool.submit(swap_supports)
        readers = [pool.submit(query_until_stopped) for _ in range(3)]
        swapper.result()
        masks = [m for r in readers for m in r.result()]
    for mask in masks:
        assert any(np.array_equal(mask, a) for a in answers), "a query saw a bank that is neither the old nor the new"


def test_default_backend_repeats_its_answer_exactly(shipped_engines):
    """The shipped model at 128 px (where bf16 attention on two threads used to vary), backend "auto"."""
    segmenter = FewShotSegmenter.from_dir(shipped_engines)  # backend "auto", default threads
    assert segmenter.backend == ("openvino-bf16" if cpu_has_bf16() else "onnxruntime")
    source = SyntheticFewShot(SyntheticWorld(resolution=128, seed=0), fold=0, split="val", size=100)
    for ep in EpisodeSampler(source, 1).fixed_episodes(3, seed=3):
        segmenter.set_support(*_support(ep))
        masks = {segmenter.segment(ep.query_image).tobytes() for _ in range(20)}
        assert len(masks) == 1, f"{len(masks)} different masks in 20 calls on {segmenter.backend}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_failed_call_leaves_the_segmenter_as_it_was(built, query_episodes, backend, tmp_path):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines, backend=backend)
    ep = query_episodes[0]
    segmenter.set_support(*_support(ep))
    want = segmenter.segment(ep.query_image)
    good = segmenter.save_support(tmp_path / "good.npz")
    contents = dict(np.load(good))
    damaged = {
        "extra_shot": {**contents, "key_00": np.concatenate([contents["key_00"]] * 2)},
        "nan": {**contents, "value_01": np.full_like(contents["value_01"], np.nan)},
        "float64": {**contents, "key_01": contents["key_01"].astype(np.float64)},
        "tokens": {**contents, "key_02": contents["key_02"][:, :-1]},
    }
    for name, bank in damaged.items():
        np.savez(tmp_path / f"{name}.npz", **bank)
        with pytest.raises(ValueError):
            segmenter.load_support(tmp_path / f"{name}.npz")
        np.testing.assert_array_equal(segmenter.segment(ep.query_image), want)  # the old bank still serves
        with pytest.raises(ValueError):
            segmenter.segment(ep.query_image, threshold=float("nan"))
        with pytest.raises(ValueError):
            segmenter.set_support(ep.support_images[0], np.zeros_like(ep.support_masks[0], np.uint8))
    segmenter.load_support(good)
    np.testing.assert_array_equal(segmenter.segment(ep.query_image), want)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b.startswith("openvino")])
def test_an_inference_error_discards_its_request(built, query_episodes, backend):
    """A graph run that fails inside the backend must not poison the state the next call uses."""
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines, backend=backend)
    ep = query_episodes[0]
    segmenter.set_support(*_support(ep))
    want = segmenter.segment(ep.query_image)
    graph = segmenter.query_segmenter
    bank = segmenter.bank
    mixed = {**bank, "key_00": np.concatenate([bank["key_00"]] * 2)}  # past the runtime's checks, into the graph
    feed = {"image": ep.query_image, "threshold": np.array(0.25, np.float32)}
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017 (the backend's own error type)
            graph.run(feed, resident=graph.upload(mixed))
    np.testing.assert_array_equal(segmenter.segment(ep.query_image), want)
