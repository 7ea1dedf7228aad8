"""The OpenVINO CPU backends on the tiny-random engines: same masks as ONNX Runtime, precision policy, `auto`."""

from __future__ import annotations

import numpy as np
import pytest

from runtime import backends, openvino_graph
from runtime.backends import cpu_has_bf16, resolve_backend
from runtime.fewshot import FewShotSegmenter
from segdata.metrics import mask_iou


def _masks(segmenter: FewShotSegmenter, episodes) -> list[np.ndarray]:
    masks = []
    for ep in episodes:
        segmenter.set_support(ep.support_images, [m.astype(np.uint8) for m in ep.support_masks])
        masks.append(segmenter.segment(ep.query_image))
        masks.append(segmenter.segment(ep.query_image[:48, :40]))  # another size through the same graph
    return masks


def test_openvino_fp32_gives_onnxruntime_s_masks_and_bank(built, episodes):
    _, engines = built
    reference = FewShotSegmenter.from_dir(engines, backend="onnxruntime")
    segmenter = FewShotSegmenter.from_dir(engines, backend="openvino", threads=1)
    assert segmenter.backend == "openvino"
    for want, got in zip(_masks(reference, episodes), _masks(segmenter, episodes)):
        assert got.dtype == np.uint8 and got.shape == want.shape
        assert mask_iou(got > 0, want > 0) >= 0.99
    assert 0 < np.mean([m.mean() for m in _masks(reference, episodes)]) < 1  # not two trivial masks
    # The bank (the support encoder's outputs) matches to float rounding.
    ep = episodes[0]
    want = reference.encode_shot(ep.support_images[0], ep.support_masks[0].astype(np.uint8))
    got = segmenter.encode_shot(ep.support_images[0], ep.support_masks[0].astype(np.uint8))
    for name, tensor in want.items():
        np.testing.assert_allclose(got[name], tensor, rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 instructions")
def test_openvino_bf16_runs_the_query_graph_in_bf16_and_the_supports_in_fp32(built, episodes):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines, backend="openvino-bf16", threads=1)
    assert segmenter.support_encoder.precision == "f32" and segmenter.query_segmenter.precision == "bf16"
    reference = FewShotSegmenter.from_dir(engines, backend="openvino", threads=1)
    ious = [mask_iou(a > 0, b > 0) for a, b in zip(_masks(reference, episodes), _masks(segmenter, episodes))]
    assert np.mean(ious) >= 0.9  # bf16 moves some boundary pixels, no more


def test_bf16_is_refused_on_a_cpu_without_it(built, monkeypatch):
    _, engines = built
    monkeypatch.setattr(openvino_graph, "cpu_has_bf16", lambda: False)
    with pytest.raises(RuntimeError, match="AVX512-BF16 or AMX"):
        FewShotSegmenter.from_dir(engines, backend="openvino-bf16")


def test_auto_picks_the_fastest_backend_this_machine_has(monkeypatch):
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: True)
    assert resolve_backend("auto") == "openvino-bf16"
    assert resolve_backend("auto", providers=["CPUExecutionProvider"]) == "onnxruntime"
    assert resolve_backend("auto", reduced_precision=False) == "onnxruntime"  # engines of the exact profile
    assert resolve_backend("openvino-bf16", reduced_precision=False) == "openvino-bf16"  # asked for by name
    assert resolve_backend("openvino") == "openvino"
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    assert resolve_backend("auto") == "onnxruntime"
    with pytest.raises(ValueError, match="unknown backend 'openvino-fp8'"):
        resolve_backend("openvino-fp8")


def test_the_default_backend_is_auto(built, monkeypatch):
    _, engines = built
    expected = "openvino-bf16" if cpu_has_bf16() else "onnxruntime"
    assert FewShotSegmenter.from_dir(engines, threads=1).backend == expected
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    assert FewShotSegmenter.from_dir(engines).backend == "onnxruntime"


def test_openvino_graphs_check_their_inputs(built, episodes):
    _, engines = built
    segmenter = FewShotSegmenter.from_dir(engines, backend="openvino", threads=1)
    ep = episodes[0]
    segmenter.set_support(ep.support_images[0], ep.support_masks[0].astype(np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        segmenter.segment(ep.query_image.astype(np.float32))
    with pytest.raises(ValueError, match="the image is 64x16; these engines take sides from 32 to 512"):
        segmenter.segment(np.zeros((16, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"missing \[.threshold., .key_00."):
        segmenter.query_segmenter.run({"image": ep.query_image}, resident={})  # no bank, no threshold
    with pytest.raises(ValueError, match="no input named"):
        segmenter.query_segmenter.upload({"key_99": np.zeros((1, 4, 4), np.float32)})
    # The resident bank is a copy: changing the caller's array later does not change it.
    key = segmenter.bank["key_00"].copy()
    resident = segmenter.query_segmenter.upload({"key_00": key})
    key[:] = 0
    np.testing.assert_array_equal(resident["key_00"].data, segmenter.bank["key_00"])


def test_memory_stays_bounded_over_many_query_sizes(built):
    """OpenVINO caches kernels per input shape; bounded, the resident set stops growing once the cache is full.

    Unbounded (OpenVINO's default of 5000 shapes) the same 800 sizes grew the process by about
    280 MB over the second 400 (`python -m benchmarks.query_sizes --shape-cache 5000`); bounded, by 1.
    """
    from benchmarks.query_sizes import distinct_sizes, measure

    _, engines = built
    result = measure(engines, "openvino", distinct_sizes(800, 32, 200), threads=2)
    assert result["growth_second_half_mb"] < 40, result["curve"]
