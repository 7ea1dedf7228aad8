"""benchmarks.latency on the tiny engines: every row and stage is measured and written; no speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import agreement, latency, openvino_ops, query_sizes, repeatability, stage_split
from runtime.cli import EXIT_BACKEND, EXIT_ENGINES
from runtime.manifest import Manifest


def test_latency_rows_stages_and_outputs(built, tmp_path):
    _, engines = built
    out = tmp_path / "bench"
    argv = ["--engines", str(engines), "--out", str(out), "--repeats", "1", "--warmup", "0", "--threads", "1"]
    latency.main(argv + ["--backends", "onnxruntime", "openvino"])
    result = json.loads((out / "latency.json").read_text())
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == ["reference", "torch-cached", "onnxruntime", "openvino"]
    reference, cached, runtime = rows["reference"], rows["torch-cached"], rows["onnxruntime"]
    assert reference["stages_ms"]["support"] > 0 and reference["speedup_vs_reference"] == pytest.approx(1.0)
    # The cached rows pay the support once, not per query; they do the same query work.
    assert cached["stages_ms"]["support"] == 0 and cached["support_once_ms"] > 0
    assert runtime["support_once_ms"] > 0
    assert reference["gflop_per_query"] > cached["gflop_per_query"] == pytest.approx(runtime["gflop_per_query"])
    for row in rows.values():
        assert row["query_ms"] == pytest.approx(sum(row["stages_ms"].values()))
        assert row["peak_extra_mb"] >= 0
    memory = result["peak_memory_mb"]
    assert set(memory["torch"]) >= {"support_full", "query_encode", "query_unet", "readout"}
    assert reference["peak_extra_mb"] == max(
        memory["torch"][s] for s in ("support_full", "query_encode", "query_unet", "readout")
    )
    assert list(memory["runtime"]) == [f"{engines} on onnxruntime", f"{engines} on openvino"]
    graphs = memory["runtime"][f"{engines} on onnxruntime"]
    assert set(graphs) == {"support_encoder", "query_segmenter"}
    assert runtime["peak_extra_mb"] == graphs["query_segmenter"]
    assert rows["openvino"]["support_once_ms"] > 0
    # Both profilers (ONNX Runtime's and OpenVINO's counters) attribute time to every stage.
    for split in result["runtime_splits"].values():
        assert sum(split.values()) == pytest.approx(1.0)
        assert split["query_encode"] > 0 and split["query_unet"] > 0 and split["readout"] > 0
    # Each runtime row ran in a process of its own that never loaded torch, as the runtime is deployed.
    assert result["runtime_process"] == "a fresh one per row, without torch"
    processes = list(result["runtime_processes"].values())
    assert len({p["pid"] for p in processes} | {os.getpid()}) == 3
    assert not any(p["torch_loaded"] for p in processes)
    assert "| onnxruntime |" in (out / "latency.md").read_text()
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="--overwrite"):
        latency.main(["--engines", str(engines), "--out", str(out)])


def test_every_query_graph_node_gets_a_stage(built):
    _, engines = built
    graph = engines / Manifest.read(engines).graph("query_segmenter").file
    stages = stage_split.node_stages(graph)
    counts = {s: list(stages.values()).count(s) for s in ("query_encode", "query_unet", "readout", "io")}
    assert all(counts.values()), counts
    assert counts["query_unet"] > counts["query_encode"]  # the UNet is most of the graph


def test_a_missing_engine_directory_is_one_line_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit, match="is not an engine directory"):
        latency.main(["--engines", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bench")])
    assert not (tmp_path / "bench").exists()
    for benchmark in (agreement, repeatability, query_sizes):
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(["--engines", str(tmp_path / "nowhere")])
        assert exit_info.value.code == EXIT_ENGINES, benchmark.__name__
        assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'nowhere'} is not an engine directory")


def test_the_runtime_row_module_never_imports_torch():
    """The runtime rows' processes stand for a deployment, which has no torch: their module must not pull it in."""
    code = "import sys, benchmarks.latency_runtime; print('torch' in sys.modules)"
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert finished.stdout.strip() == "False"


def test_a_runtime_row_that_fails_in_its_process_is_one_line_each_not_a_traceback(built, tmp_path, capfd):
    _, engines = built  # built without TensorRT plans, which no machine here can make
    out = tmp_path / "bench"
    argv = ["--engines", str(engines), "--out", str(out), "--repeats", "1", "--warmup", "0", "--threads", "1"]
    with pytest.raises(SystemExit) as exit_info:
        latency.main(argv + ["--backends", "tensorrt"])
    assert exit_info.value.code == EXIT_BACKEND
    errors = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert "Traceback" not in "\n".join(errors)
    assert errors[-2].startswith(f"error: {engines} has no TensorRT plans")  # the row's own process
    assert errors[-1].startswith(f"error: the runtime row for {engines} on tensorrt failed in its process")
    assert not out.exists()


def test_openvino_ops_splits_both_compilations_by_node_kind(built, tmp_path):
    _, engines = built
    out = tmp_path / "ops"
    argv = ["--engines", str(engines), "--precision", "f32", "--runs", "1", "--threads", "1", "--out", str(out)]
    assert openvino_ops.main(argv) == 0
    result = json.loads((out / "ops.json").read_text())
    assert list(result["compilations"]) == list(openvino_ops.COMPILATIONS)
    for compilation in result["compilations"].values():
        kinds = compilation["node_kinds"]
        assert sum(k["share"] for k in kinds.values()) == pytest.approx(1.0)
        assert any(kind.startswith("Convolution/") for kind in kinds)  # the encoder, UNet and read-out convolve
        assert compilation["median_ms"] > 0
    # Snippets off, OpenVINO runs no fused subgraph; on, it fuses some (the attention at least).
    off, on = (result["compilations"][name]["node_kinds"] for name in openvino_ops.COMPILATIONS)
    assert not any(kind.startswith("Subgraph/") for kind in off)
    assert any(kind.startswith("Subgraph/") for kind in on)
    with pytest.raises(SystemExit, match="--overwrite"):
        openvino_ops.main(argv)


def test_rows_name_the_attention_blocks_only_where_a_run_compares_them():
    from benchmarks.latency_report import _block_suffix

    blocked, unblocked, old = {"attention_block": 256}, {"attention_block": 0}, {}
    assert _block_suffix(blocked, [blocked]) == "" and _block_suffix(old, [old, unblocked]) == ""
    assert _block_suffix(blocked, [blocked, old]) == ", attention in blocks of 256"
    assert _block_suffix(old, [blocked, old]) == ", attention unblocked"  # recorded before blocks: unblocked


def test_openvino_ops_compares_builds_of_one_model_interleaved(built, shipped_engines, tmp_path, capsys):
    import shutil

    _, engines = built
    copy = tmp_path / "copy"
    shutil.copytree(engines, copy)
    out = tmp_path / "ops"
    argv = ["--precision", "f32", "--runs", "1", "--threads", "1", "--snippets", "off", "--out", str(out)]
    assert openvino_ops.main(["--engines", str(engines), str(copy), *argv]) == 0
    result = json.loads((out / "ops.json").read_text())
    assert list(result["compilations"]) == [f"{e}, snippets off (the runtime)" for e in (engines, copy)]
    assert all(not any(k.startswith("Subgraph/") for k in c["node_kinds"]) for c in result["compilations"].values())
    for others, message in (([shipped_engines], "another model"), ([engines], "named twice")):
        with pytest.raises(SystemExit) as exit_info:
            openvino_ops.main(["--engines", str(engines), *map(str, others), *argv[:-2]])
        assert exit_info.value.code != 0 and message in capsys.readouterr().err
