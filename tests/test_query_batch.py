"""The batched query graph (`build_engine --query-batch`): B queries of one size per run, each mask equal to a single run's."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import BATCHED_MAX_QUERIES

from export.diffews_graphs import diffews_graph_specs, query_batch_spec
from runtime.fewshot import FewShotSegmenter, batches_reproduce_single_runs
from runtime.manifest import Manifest
from runtime.openvino_graph import cpu_has_bf16
from runtime.sections import QUERY_BATCH, QUERY_SEGMENTER, FusedLayer
from segdata.samples import episode_at_size, held_out_episodes

FP32_BACKENDS = ["onnxruntime", "openvino"]  # the batched graph is not opened in bf16 (see below)
# The tests that count runs name a backend: on a CPU with bf16, `auto` runs no batched graph.


@pytest.fixture(scope="module")
def queries():
    """Seven held-out 128 px episodes' queries: five at 128 x 128, two at 96 x 160 (wider than tall)."""
    episodes = held_out_episodes(128, 1, count=7, seed=4, factors=((1, 1),))
    images = [ep.query_image for ep in episodes[:5]]
    images += [episode_at_size(ep, 160, 96).query_image for ep in episodes[5:]]
    return episodes[0], images


class RunCounter:
    """Wraps a graph's `run` to record the batch size of every call."""

    def __init__(self, graph, key: str):
        self.graph, self.key, self.batches = graph, key, []
        self._run = graph.run
        graph.run = self

    def __call__(self, feed, resident=None):
        self.batches.append(len(feed[self.key]) if self.key == "images" else 1)
        return self._run(feed, resident=resident)


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_batched_masks_equal_single_runs(batched_engines, queries, backend):
    support, images = queries
    segmenter = FewShotSegmenter.from_dir(batched_engines, backend=backend)
    assert segmenter.max_query_batch == BATCHED_MAX_QUERIES
    segmenter.set_support(support.support_images, support.support_masks)
    single = [segmenter.segment(image) for image in images]
    batched_runs = RunCounter(segmenter.query_batch, "images")
    single_runs = RunCounter(segmenter.query_segmenter, "image")
    masks = segmenter.segment_batch(images)
    # 128 x 128: 3 + 2 in two batched runs; 96 x 160: 2 in one
    assert sorted(batched_runs.batches) == [2, 2, 3] and single_runs.batches == []
    assert len(masks) == len(images)
    for i, (mask, want) in enumerate(zip(masks, single)):
        assert mask.shape == images[i].shape[:2]
        np.testing.assert_array_equal(mask, want, err_msg=f"query {i}")
    coverage = [m.mean() for m in single]
    assert max(coverage) > 0.02 and min(coverage) < 0.98, "masks this test compares must not be trivial"
    assert len({m.tobytes() for m in single}) > 2, "the queries must get different masks"


def test_a_lone_size_runs_in_the_single_graph_and_a_threshold_applies_to_all(batched_engines, queries):
    support, images = queries
    segmenter = FewShotSegmenter.from_dir(batched_engines, backend="onnxruntime")
    segmenter.set_support(support.support_images, support.support_masks)
    batch = [images[0], images[5], images[1]]  # the 96 x 160 query has no partner
    single_runs = RunCounter(segmenter.query_segmenter, "image")
    masks = segmenter.segment_batch(batch, threshold=0.6)
    assert single_runs.batches == [1]
    for mask, image in zip(masks, batch):
        np.testing.assert_array_equal(mask, segmenter.segment(image, threshold=0.6))


def test_a_bad_query_names_its_index_and_nothing_runs(batched_engines, queries):
    support, images = queries
    segmenter = FewShotSegmenter.from_dir(batched_engines, backend="onnxruntime")
    segmenter.set_support(support.support_images, support.support_masks)
    runs = RunCounter(segmenter.query_batch, "images")
    tiny = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"query 2: the image is 8x8"):
        segmenter.segment_batch([images[0], images[1], tiny])
    with pytest.raises(ValueError, match="threshold"):
        segmenter.segment_batch(images[:2], threshold=1.5)
    assert runs.batches == []
    with pytest.raises(ValueError, match="list of queries"):
        segmenter.segment_batch(images[0])


def test_concurrent_batches_against_two_support_sets_each_get_their_own_masks(batched_engines, queries):
    support, images = queries
    segmenter = FewShotSegmenter.from_dir(batched_engines, backend="onnxruntime")
    other = held_out_episodes(128, 2, count=1, seed=9, factors=((1, 1),))[0]
    banks = [
        segmenter.encode_support(support.support_images, support.support_masks),
        segmenter.encode_support(other.support_images, other.support_masks),
    ]
    want = [[segmenter.segment(image, support=bank) for image in images] for bank in banks]
    assert any(not np.array_equal(a, b) for a, b in zip(*want)), "the two support sets must give different masks"
    jobs = [i % 2 for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: segmenter.segment_batch(images, support=banks[k]), jobs))
    for k, masks in zip(jobs, results):
        for got, expected in zip(masks, want[k]):
            np.testing.assert_array_equal(got, expected)


def test_bf16_runs_a_batch_one_by_one_so_each_mask_equals_its_single_run(batched_engines, queries):
    manifest = Manifest.read(batched_engines)
    entry = manifest.graph(QUERY_BATCH)
    assert entry.reduced_precision  # what would run in bf16
    assert not batches_reproduce_single_runs("openvino-bf16", entry)
    assert all(batches_reproduce_single_runs(backend, entry) for backend in FP32_BACKENDS)
    if not cpu_has_bf16():
        return  # the rule above is what decides; the run below needs bf16 instructions
    support, images = queries
    segmenter = FewShotSegmenter.from_dir(batched_engines, backend="openvino-bf16")
    assert segmenter.query_batch is None and segmenter.max_query_batch == 1
    segmenter.set_support(support.support_images, support.support_masks)
    for mask, image in zip(segmenter.segment_batch(images[:3]), images[:3]):
        np.testing.assert_array_equal(mask, segmenter.segment(image))


def test_the_manifest_describes_the_batched_graph(batched_engines):
    manifest = Manifest.read(batched_engines)
    spec = manifest.graph(QUERY_BATCH).spec
    single = manifest.graph(QUERY_SEGMENTER).spec
    assert spec.input_names == ["images", *single.input_names[1:]]
    assert spec.inputs[0].shape == ("batch", "height", "width", 3)
    assert spec.inputs[0].max_shape[0] == BATCHED_MAX_QUERIES
    assert spec.outputs[0].shape == ("batch", "height", "width")
    parity = (batched_engines / "parity.md").read_text()
    assert QUERY_BATCH in parity
    assert json.loads((batched_engines / "manifest.json").read_text())["graphs"][QUERY_BATCH]["reduced_precision"]


def test_engines_without_the_batched_graph_run_batches_one_by_one(built, episodes):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines)
    assert segmenter.query_batch is None and segmenter.max_query_batch == 1
    ep = episodes[0]
    segmenter.set_support(ep.support_images, ep.support_masks)
    queries = [e.query_image for e in episodes[:3]]
    for got, query in zip(segmenter.segment_batch(queries), queries):
        np.testing.assert_array_equal(got, segmenter.segment(query))


def test_a_batch_of_one_is_refused_at_build_time():
    specs = diffews_graph_specs([FusedLayer("a", 16, 8)], max_shots=2)
    with pytest.raises(ValueError, match="at least 2"):
        query_batch_spec(specs[QUERY_SEGMENTER], 1)
    from export.diffews_build import build_diffews

    with pytest.raises(ValueError, match="query_batch"):
        build_diffews("/nonexistent/out", query_batch=1)


def test_the_throughput_benchmark_reports_every_batch_size(batched_engines, tmp_path):
    from benchmarks.query_batch import main

    assert (
        main(
            [
                "--engines",
                str(batched_engines),
                "--batches",
                "1",
                "3",
                "--backends",
                "onnxruntime",
                "--calls",
                "10",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "query-batch.json").read_text())
    rows = result["backends"]["onnxruntime"]
    assert set(rows) == {"1", "3"} and all(r["equal_to_single"] for r in rows.values())
    assert rows["1"]["throughput_vs_first"] == 1.0 and rows["3"]["n"] == 10
    assert "isa_features" in result["machine"]
    with pytest.raises(SystemExit, match="at most 3 queries"):
        main(["--engines", str(batched_engines), "--batches", "1", "4", "--out", str(tmp_path / "x")])
