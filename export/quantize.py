"""int8 post-training quantization of a DiffewS query graph with NNCF, one stage at a time.

    feeds = calibration_feeds(segmenter, episodes)       # query-graph inputs of training-category episodes
    model = quantize_query_graph(engines / "query_segmenter.onnx", feeds, stages=("readout",))
    compiled = openvino.Core().compile_model(model, "CPU")

The query graph runs three stages (`STAGES`): the query encoder (VAE encoder or distilled), the
KV-fusion UNet and the mask read-out (VAE decoder, mask head or mask decoder). Each graph node
knows its stage from the module path the exporter records in its metadata (`namespace`), so
NNCF's ignored scope can keep every stage but the chosen ones in fp32: the way to find which
stage costs agreement (`benchmarks.int8` measures each). NNCF's OpenVINO backend does the work:
statistics over the calibration feeds, FakeQuantize insertion, the transformer preset's rules
(softmax and layer-norm inputs stay in float).

What it found is in docs/benchmarks.md (int8): on the shipped synth model no stage meets the
0.98 agreement bar, so no profile runs int8.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

# Query-graph stages, and the module paths (from the exported nodes' `namespace`) that belong to each.
STAGES = {
    "encoder": ("model.vae.encoder", "model.vae.quant_conv", "model.query_encoder"),
    "unet": ("model.unet",),
    "readout": ("model.vae.decoder", "model.vae.post_quant_conv", "model.mask_head", "model.mask_decoder"),
}
GLUE = "glue"  # resizing, thresholding: no weights, never quantized


def _nncf():
    try:
        import nncf
    except ImportError as err:
        raise ImportError("int8 quantization needs NNCF: pip install 'diffseg-deploy[quantize]'") from err
    return nncf


def stage_of(namespace: str) -> str:
    """The stage of a node from its exporter `namespace` metadata ("... /model.unet: ..."), or `GLUE`."""
    for stage, modules in STAGES.items():
        if any(f"/{module}" in namespace for module in modules):
            return stage
    return GLUE


def node_stages(onnx_path: Path) -> dict[str, str]:
    """ONNX node name -> its stage, for every node of the graph file (weights not loaded)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {
        node.name: stage_of({p.key: p.value for p in node.metadata_props}.get("namespace", "")) for node in graph.node
    }


def calibration_feeds(segmenter, episodes: Iterable) -> list[dict[str, np.ndarray]]:
    """Query-graph feeds (image, threshold, bank) of `episodes`, banks from `segmenter`'s support encoder.

    Args:
        segmenter: a `runtime.fewshot.FewShotSegmenter` of the engines being quantized (fp32 backend).
        episodes: training-category episodes (`segdata.episodes.Episode`): calibration must not see held-out classes.
    """
    threshold = np.array(segmenter.threshold, dtype=np.float32)
    feeds = []
    for episode in episodes:
        bank = segmenter.encode_support(episode.support_images, episode.support_masks)
        feeds.append({"image": episode.query_image, "threshold": threshold, **bank.arrays})
    return feeds


def quantize_query_graph(onnx_path: Path, feeds: Sequence[dict[str, np.ndarray]], stages: Sequence[str]):
    """The OpenVINO model of `onnx_path` with the weighted layers of `stages` quantized to int8 (others fp32).

    Args:
        feeds: calibration inputs (`calibration_feeds`); all of them are used.
        stages: names from `STAGES`.
    Returns:
        an `openvino.Model` with FakeQuantize nodes (compile it for the CPU; `openvino.save_model` writes it).
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"stages must be a non-empty choice of {', '.join(STAGES)}, got {list(stages)}")
    if not feeds:
        raise ValueError("quantization needs at least one calibration feed")
    import openvino as ov

    nncf = _nncf()
    model = ov.Core().read_model(str(onnx_path))
    by_node = node_stages(onnx_path)
    # OpenVINO names an op after its ONNX node (a suffix such as "/WithoutBiases" for the parts it splits off)
    kept = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if by_node.get(op.get_friendly_name().split("/")[0], GLUE) not in stages
    ]
    return nncf.quantize(
        model,
        nncf.Dataset(list(feeds)),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(feeds),
        ignored_scope=nncf.IgnoredScope(names=kept, validate=False),
    )


def quantized_stages(model, onnx_path: Path) -> set[str]:
    """The stages whose ops a quantized model feeds through FakeQuantize (what `quantize_query_graph` changed)."""
    by_node = node_stages(onnx_path)
    found = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        for target in op.output(0).get_target_inputs():
            name = target.get_node().get_friendly_name().split("/")[0]
            found.add(by_node.get(name, GLUE))
    return found
