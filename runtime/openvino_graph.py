"""OpenVINO's CPU plugin behind the `Graph` interface, compiled from the same .onnx file ONNX Runtime reads.

Infer requests are not thread-safe, so each concurrent `run` takes its own from a `RequestPool`.
Repeatable: the same feed gives bit-identical outputs. For bf16 this needs OpenVINO's snippets
(its JIT-fused attention and element-wise subgraphs) switched off: with them, bf16 attention on
more than one thread gave a different mask on most runs of the same query (measured on Xeon
AVX512-BF16, OpenVINO 2026.4; fp32 snippets are repeatable).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from runtime.contract import GraphSpec
from runtime.graph import Graph, RequestPool, check_input_names
from runtime.sessions import graph_load_error

# OpenVINO's CPU plugin caches the kernels it prepares per input shape; the default (5000 entries)
# let the process grow by about 0.7 MB with every new query size. A bound keeps memory flat while
# recently used sizes stay fast (`benchmarks.query_sizes` measures both).
OPENVINO_SHAPE_CACHE = 64
# Below that cache, oneDNN (inside OpenVINO's CPU plugin) keeps its own cache of primitives, 1024 by
# default. On an AMD EPYC (AVX-512, no AMX) it grew the process by about 0.35 MB per new query size
# although the shape cache was bounded (tests/test_openvino.py's 800 sizes: +106 MB over the second
# 400); bounded alike, by about 2 MB. oneDNN reads this variable once, when the plugin first
# builds a primitive, so it is set before any graph compiles; a value the user set is kept.
ONEDNN_PRIMITIVE_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def _openvino():
    os.environ.setdefault(ONEDNN_PRIMITIVE_CACHE, str(OPENVINO_SHAPE_CACHE))  # before anything compiles
    try:
        return importlib.import_module("openvino")
    except ImportError as err:
        raise RuntimeError(
            f"the openvino backends need the openvino package ({err}): pip install 'diffseg-deploy[runtime]' "
            "(or openvino), or use backend='onnxruntime'"
        ) from err


def cpu_has_bf16() -> bool:
    """Does OpenVINO's CPU plugin compute in bf16 on this CPU (AVX512-BF16 or AMX)? False without OpenVINO."""
    try:
        ov = _openvino()
    except RuntimeError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_config(precision: str, threads: int | None) -> dict:
    """OpenVINO CPU compile properties: latency-oriented, repeatable, with a bounded shape cache."""
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
        "CPU_RUNTIME_CACHE_CAPACITY": OPENVINO_SHAPE_CACHE,
    }
    if precision == "bf16":
        config["SNIPPETS_MODE"] = "DISABLE"  # bf16 snippets are not repeatable on several threads
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVinoGraph(Graph):
    """A graph compiled by OpenVINO for the CPU.

    Args:
        precision: "f32", or "bf16": OpenVINO's bf16 inference precision (bf16 operands with fp32
            accumulation in convolutions and matmuls; bf16 has fp32's exponent range, so no
            fp16-style overflow). Refused on a CPU without bf16 instructions rather than run at
            another precision than the one asked for.
        threads: inference threads per call (None: OpenVINO's default, one per physical core).
    """

    def __init__(self, path: Path, spec: GraphSpec, precision: str = "f32", threads: int | None = None):
        ov = _openvino()
        core = ov.Core()
        if precision == "bf16" and not cpu_has_bf16():
            raise RuntimeError(
                "backend 'openvino-bf16' needs a CPU with AVX512-BF16 or AMX, which this one lacks; use 'openvino'"
            )
        try:
            model = core.read_model(str(path))
        except RuntimeError as err:
            raise graph_load_error(path, "OpenVINO", err) from err
        check_input_names(spec, path, [port.get_any_name() for port in model.inputs])
        self.spec, self.precision = spec, precision
        self.compiled = core.compile_model(model, "CPU", openvino_config(precision, threads))
        self.requests = RequestPool(self.compiled.create_infer_request)
        self._tensor = ov.Tensor

    def _place(self, arrays: dict[str, np.ndarray]) -> dict:
        # Copies (shared_memory=False): a caller changing its arrays later cannot change the bank.
        return {name: self._tensor(array, shared_memory=False) for name, array in arrays.items()}

    def resident_host_bytes(self, resident: dict) -> int:
        return sum(int(tensor.byte_size) for tensor in resident.values())  # the copies _place made

    def _run(self, feed: dict[str, np.ndarray], resident: dict) -> list[np.ndarray]:
        with self.requests.take() as request:
            request.infer({**feed, **resident})
            return [request.get_tensor(name).data.copy() for name in self.spec.output_names]
