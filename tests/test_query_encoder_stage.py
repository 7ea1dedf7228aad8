"""benchmarks.query_encoder_stage: both encoders timed in turn on the SD 2.1 architecture, the report written."""

from __future__ import annotations

import json

import pytest

from benchmarks import query_encoder_stage

pytestmark = pytest.mark.slow


def test_both_encoders_are_timed_and_reported(tmp_path):
    query_encoder_stage.main(["--calls", "2", "--side", "64", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "query-encoder-stage.json").read_text())
    assert set(result["rows"]) == {"vae", "distilled"}
    for row in result["rows"].values():
        assert len(row["calls_ms"]) == 2 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    assert result["ratio_of_medians"] > 0 and result["machine"]["threads"] == 2
    assert "| distilled |" in (tmp_path / "query-encoder-stage.md").read_text()
