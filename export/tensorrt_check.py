"""Can TensorRT's ONNX parser take this graph? Checked on the CPU, against the parser's published operator table.

    problems = tensorrt_problems(Path("engines/x/query_segmenter.onnx"))   # [] when the graph is parseable

The table (`tensorrt_onnx_support.json`, with its source and TensorRT release) lists the
operators the parser supports and its opset range. Beyond operator names this checks the
restrictions that bite exported vision graphs: `Resize` without antialiasing and in nearest or
linear mode, constant `axes` for reductions and (un)squeezes, uint8 only at the graph's edges,
and no operators of other domains (ONNX Runtime's contrib operators from `--optimize`). A graph
that passes can still fail on a real builder (a layer's precision or size limits): that needs a GPU.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import onnx

SUPPORT_TABLE = Path(__file__).with_name("tensorrt_onnx_support.json")
_AXES_AS_INPUT = ("ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
                  "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "Squeeze", "Unsqueeze")  # fmt: skip


@cache
def support_table() -> dict:
    return json.loads(SUPPORT_TABLE.read_text())


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _graphs(graph: onnx.GraphProto):
    """The graph and every subgraph (If / Loop / Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graphs(subgraph)


def tensorrt_problems(path: Path) -> list[str]:
    """Every reason TensorRT's parser would reject the graph at `path` (weights are not read)."""
    table = support_table()
    supported, (low, high) = set(table["supported"]), table["opset_range"]
    model = onnx.load(str(path), load_external_data=False)
    problems = []
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not low <= opset.version <= high:
            problems.append(f"opset {opset.version} is outside TensorRT {table['tensorrt']}'s range {low}..{high}")
    for graph in _graphs(model.graph):
        constants = {t.name for t in graph.initializer}
        constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
        for node in graph.node:
            where = f"node {node.name or '?'} ({node.op_type})"
            if node.domain not in ("", "ai.onnx"):
                problems.append(
                    f"{where}: operator domain {node.domain!r} is ONNX Runtime-only (built with --optimize?)"
                )
            elif node.op_type not in supported:
                problems.append(f"{where}: not supported by TensorRT's ONNX parser")
            elif node.op_type == "Resize":
                if _attribute(node, "antialias", 0):
                    problems.append(f"{where}: antialiased Resize is not supported")
                mode = _attribute(node, "mode", b"nearest")
                mode = mode.decode() if isinstance(mode, bytes) else mode
                if mode not in ("nearest", "linear"):
                    problems.append(f"{where}: Resize mode {mode!r} is not supported (nearest or linear only)")
            elif node.op_type in _AXES_AS_INPUT and len(node.input) > 1 and node.input[1]:
                if node.input[1] not in constants:
                    problems.append(f"{where}: axes come from a computed tensor; TensorRT needs them constant")
    problems += _uint8_intermediates(model)
    return problems


def _uint8_intermediates(model: onnx.ModelProto) -> list[str]:
    """TensorRT takes uint8 only as a network input or output."""
    inferred = onnx.shape_inference.infer_shapes(model)
    edges = {t.name for t in model.graph.input} | {t.name for t in model.graph.output}
    return [
        f"tensor {info.name} is uint8 inside the graph; TensorRT allows uint8 only as an input or output"
        for info in inferred.graph.value_info
        if info.type.tensor_type.elem_type == onnx.TensorProto.UINT8 and info.name not in edges
    ]
