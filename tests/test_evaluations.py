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
        assert 0.98 <= row["min_iou"] <= row["mean_iou"] <= 1
    assert "| 1 | 4 |" in capsys.readouterr().out
