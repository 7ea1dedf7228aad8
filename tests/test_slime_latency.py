"""benchmarks.slime_latency on the tiny SLiMe engines: the rows, the spread, the agreement, the machine's record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import slime_latency

pytestmark = pytest.mark.slow


def test_the_report_times_every_row_per_size_and_compares_the_part_maps(slime_engines, tmp_path):
    embedding, engines = slime_engines
    out = tmp_path / "report"
    argv = ["--engines", str(engines), "--embedding", str(embedding), "--out", str(out), "--scenes", "2"]
    slime_latency.main(argv + ["--backends", "onnxruntime", "openvino"])
    result = json.loads((out / "slime-latency.json").read_text())
    assert len(result["latency"]) == len(slime_latency.SIZE_FACTORS)
    for rows in result["latency"].values():
        assert set(rows) == {"reference", "torch-stop-early", "onnxruntime", "openvino"}
        assert all(r["n"] == 10 and r["p50_ms"] <= r["p90_ms"] <= r["max_ms"] for r in rows.values())
    # fp32 graphs compute what the stopped-early PyTorch model does: the same part labels
    for row in ("torch-stop-early", "onnxruntime", "openvino"):
        assert result["agreement"][row]["pixel_agreement"] > 0.99
    assert result["machine"]["threads"] == 2 and "onnxruntime" in result["machine"]["libraries"]
    assert "| reference |" in (out / "slime-latency.md").read_text()
    with pytest.raises(SystemExit, match="--overwrite"):
        slime_latency.main(argv)
    with pytest.raises(SystemExit, match="at least 10"):
        slime_latency.main(argv + ["--calls", "3", "--overwrite"])


def test_label_agreement_counts_pixels_and_classes():
    want = np.array([[0, 1], [2, 2]])
    got = np.array([[0, 1], [2, 1]])
    pixels, class_iou = slime_latency.label_agreement(want, got, 3)
    assert pixels == 0.75 and class_iou == pytest.approx((1 + 0.5 + 0.5) / 3)
