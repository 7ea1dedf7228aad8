"""The evaluation and agreement entry points run end to end on tiny inputs and report figures that make sense."""

from __future__ import annotations

import json

import pytest

from benchmarks import agreement
from train import evaluate_parts

pytestmark = pytest.mark.slow


def test_evaluate_parts_scores_slime_next_to_its_baselines(tmp_path):
    out = tmp_path / "parts"
    argv = ["--base", "tiny-random", "--categories", "0", "--settings", "1", "--test-images", "3"]
    argv += ["--epochs", "2", "--resolution", "64", "--thresholds", "0.1", "--out", str(out)]
    assert evaluate_parts.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("python -m train.evaluate_parts --base tiny-random")
    (category,) = results["categories"]
    averages = category["average"]
    assert list(averages) == ["all background", "prior (10 masks)", "SLiMe 1-sample", "SLiMe 1-sample, threshold 0.1"]
    for method, value in averages.items():  # two epochs on random weights: any IoU, but an IoU
        assert 0 <= value <= 1, method
    assert set(category["rows"]["SLiMe 1-sample"]) <= set(category["class_names"])
    assert "SLiMe 1-sample" in (out / "results.md").read_text()


def test_agreement_compares_the_same_calls_on_both_sides(built, tmp_path, capsys):
    _, engines = built
    out = tmp_path / "agreement.json"
    argv = ["--engines", str(engines), "--episodes", "4", "--shots", "1", "2", "--backend", "onnxruntime"]
    assert agreement.main(argv + ["--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["shots"] for r in rows] == [1, 2] and all(r["episodes"] == 4 for r in rows)
    for row in rows:  # fp32 engines on ONNX Runtime give the PyTorch pipeline's masks
        assert 0.98 <= row["min_iou"] <= row["worst_size_mean_iou"] <= row["mean_iou"] <= 1
        sizes = {s["size"]: s for s in row["sizes"]}
        assert set(sizes) == {"64x64", "96x64", "64x80", "48x48"} and sum(s["episodes"] for s in row["sizes"]) == 4
        assert row["worst_size_mean_iou"] == min(s["mean_iou"] for s in row["sizes"])
        assert 0 <= row["torch_miou"] <= 100 and 0 <= row["runtime_miou"] <= 100
    printed = capsys.readouterr().out
    assert "| 1 | 4 |" in printed and "| 2 | 64x80 | 1 |" in printed


def test_agreement_episodes_mix_query_and_support_sizes():
    episodes = agreement.mixed_size_episodes(128, shots=2, count=5, fold=0, seed=0)
    queries = [ep.query_image.shape[:2] for ep in episodes]
    assert queries == [(128, 128), (128, 192), (160, 128), (96, 96), (160, 96)]  # (height, width)
    assert all(ep.query_mask.shape == ep.query_image.shape[:2] for ep in episodes)
    for ep in episodes:  # the two supports of an episode differ in size from each other and from the query
        support_sizes = [im.shape[:2] for im in ep.support_images]
        assert len({*support_sizes, ep.query_image.shape[:2]}) == 3
        assert [m.shape for m in ep.support_masks] == support_sizes
