"""int8 quantization of the query graph by stage (`export.quantize`): the stage map, and NNCF touching only the chosen stage."""

from __future__ import annotations

import numpy as np
import pytest

from export.quantize import (
    GLUE,
    STAGES,
    calibration_feeds,
    node_stages,
    quantize_query_graph,
    quantized_stages,
    stage_of,
)
from runtime.fewshot import FewShotSegmenter
from runtime.manifest import Manifest
from runtime.sections import QUERY_SEGMENTER


def test_a_node_belongs_to_the_stage_of_its_module_path():
    assert stage_of(": export.diffews_graphs.QuerySegmenter/model.vae.encoder: diffusers.Encoder") == "encoder"
    assert stage_of(": export.diffews_graphs.QuerySegmenter/model.unet: diffusers.UNet2DConditionModel") == "unet"
    assert stage_of(": export.diffews_graphs.QuerySegmenter/model.mask_head: modeling.readouts.MaskHead") == "readout"
    assert stage_of(": export.diffews_graphs.QuerySegmenter/model.vae.decoder: diffusers.Decoder") == "readout"
    assert stage_of(": export.diffews_graphs.QuerySegmenter/matmul: aten.matmul.default") == GLUE
    assert stage_of("") == GLUE


def _query_graph(engines):
    return engines / Manifest.read(engines, verify=False).graph(QUERY_SEGMENTER).file


def test_the_exported_query_graph_has_every_stage(built):
    stages = set(node_stages(_query_graph(built[1])).values())
    assert set(STAGES) <= stages


@pytest.mark.parametrize("stage", ["readout", "unet"])
def test_only_the_chosen_stage_is_quantized_and_the_graph_still_runs(built, episodes, stage):
    import openvino as ov

    engines = built[1]
    segmenter = FewShotSegmenter.from_dir(engines, backend="onnxruntime")
    feeds = calibration_feeds(segmenter, episodes[:2])
    assert set(feeds[0]) == set(segmenter.query_segmenter.spec.input_names)
    model = quantize_query_graph(_query_graph(engines), feeds, [stage])
    assert quantized_stages(model, _query_graph(engines)) - {GLUE} == {stage}
    mask = ov.Core().compile_model(model, "CPU").create_infer_request().infer(feeds[0])[0]
    assert mask.shape == episodes[0].query_image.shape[:2] and set(np.unique(mask)) <= {0, 1}


def test_bad_arguments_are_refused_before_any_work(built):
    graph = _query_graph(built[1])
    with pytest.raises(ValueError, match="stages"):
        quantize_query_graph(graph, [{}], ["decoder"])
    with pytest.raises(ValueError, match="calibration"):
        quantize_query_graph(graph, [], ["unet"])


def test_the_int8_report_sets_every_row_against_fp32_and_bf16():
    from benchmarks.int8 import markdown

    agreement = {
        "mean_iou": 0.99,
        "min_iou": 0.9,
        "worst_size": "96x160",
        "worst_size_mean_iou": 0.98,
        "fp32_miou": 52.6,
        "candidate_miou": 52.5,
    }
    result = {
        "engines": "engines/e",
        "resolution": 128,
        "nncf": "3.4.0",
        "calibration": 32,
        "episodes": 100,
        "calls": 10,
        "precision": "bf16",
        "machine": {"cpu": "a CPU", "isa_features": ["amx_int8"], "threads": 2},
        "variants": {name: {"agreement": agreement, "quantize_s": 1.0} for name in ("bf16", "readout")},
        "latency": {
            name: {"p50_ms": p50, "p90_ms": p50, "max_ms": p50}
            for name, p50 in (("fp32", 100.0), ("bf16", 50.0), ("readout", 40.0))
        },
    }
    text = markdown(result)
    assert "speed-up vs fp32 (p50) | speed-up vs bf16 (p50)" in text
    assert "| readout | 40.0 | 40.0 | 40.0 | 2.50x | 1.25x |" in text
    assert "| bf16 | 0.9900 | 96x160: 0.9800 | 0.9000 | 52.5 | 1 |" in text


def test_bf16_is_refused_on_a_cpu_without_it(tmp_path, monkeypatch, capsys):
    import benchmarks.int8

    monkeypatch.setattr(benchmarks.int8, "cpu_has_bf16", lambda: False)
    with pytest.raises(SystemExit):
        benchmarks.int8.main(["--engines", str(tmp_path), "--precision", "bf16", "--out", str(tmp_path / "out")])
    assert "this CPU has no bf16 instructions" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
