"""Where a query graph spends its time, by stage: ONNX Runtime's profiler and OpenVINO's per-node counters.

Each exported node's name scope (the dynamo exporter's `pkg.torch.onnx.name_scopes` metadata)
tells its stage: `query_encode` (VAE encoder or distilled query encoder), `query_unet`, `readout` (mask decoder and
threshold) or `io` (in-graph resizing and casts). The shares are set against the graph's
measured wall time by `benchmarks.latency`.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import onnx

from runtime.manifest import Manifest
from runtime.openvino_graph import openvino_config
from runtime.sections import QUERY_SEGMENTER


def stage_of(scopes: str) -> str:
    """Benchmark stage of a query-graph node from its exporter name scopes."""
    if any(k in scopes for k in ("model.vae.encoder", "model.vae.quant_conv", "model.query_encoder")):
        return "query_encode"
    if "model.unet" in scopes:
        return "query_unet"
    if any(
        k in scopes for k in ("model.vae.decoder", "model.vae.post_quant_conv", "model.mask_head", "model.mask_decoder")
    ):
        return "readout"
    return "io"


def node_stages(graph_path: Path) -> dict[str, str]:
    """Node name -> stage, from the `pkg.torch.onnx.name_scopes` metadata the dynamo exporter writes."""
    model = onnx.load(str(graph_path), load_external_data=False)
    stages = {}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        stages[node.name] = stage_of(scopes)
    return stages


def profiled_split(engines: Path, feed: dict, threads: int | None, runs: int = 2) -> dict[str, float]:
    """Share of the query graph's kernel time per stage, from ONNX Runtime's profiler."""
    import onnxruntime as ort

    manifest = Manifest.read(engines, verify=False)
    path = engines / manifest.graph(QUERY_SEGMENTER).file
    options = ort.SessionOptions()
    # Unfused, so every profiled node keeps its exported name (and stage); only the shares are used.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_profiling = True
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "query")
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    stages, totals = node_stages(path), defaultdict(float)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            totals[stages.get(name[: -len("_kernel_time")], "io")] += event["dur"]
    return _shares(totals)


def _shares(totals: dict[str, float]) -> dict[str, float]:
    whole = sum(totals.values()) or 1.0
    return {stage: totals[stage] / whole for stage in ("query_encode", "query_unet", "readout", "io")}


def openvino_split(engines: Path, feed: dict, threads: int | None, precision: str, runs: int = 2) -> dict[str, float]:
    """Share of the query graph's time per stage, from OpenVINO's per-node performance counters.

    OpenVINO fuses nodes; each executed node lists the exported nodes it came from
    (`originalLayersNames`), whose name scopes tell its stage. Nodes the plugin inserted (layout
    reorders, normalisation pieces under new names) take the stage of the node executed before them.
    """
    import openvino as ov

    path = engines / Manifest.read(engines, verify=False).graph(QUERY_SEGMENTER).file
    config = {**openvino_config(precision, threads), "PERF_COUNT": True}  # compiled as the runtime compiles it
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    origins = {
        op.get_friendly_name(): op.get_rt_info()["originalLayersNames"].astype(str).split(",")
        for op in compiled.get_runtime_model().get_ops()
    }
    request = compiled.create_infer_request()
    for _ in range(runs):
        request.infer(feed)
    stages, totals, stage = node_stages(path), defaultdict(float), "io"
    for node in request.profiling_info:  # the last run's counters, in execution order
        names = [n.split("/")[0] for n in origins.get(node.node_name, []) if n]
        stage = next((stages[n] for n in names if n in stages), stage)
        totals[stage] += node.real_time.total_seconds()
    return _shares(totals)
