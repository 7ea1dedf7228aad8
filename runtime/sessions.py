"""ONNX Runtime sessions for an engine directory's graphs, validated against their descriptors."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.contract import GraphSpec
from runtime.manifest import EngineDirError

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:  # the runtime's only hard inference dependency
        raise ImportError("the runtime needs onnxruntime: pip install 'diffseg-deploy[runtime]'") from err
    return onnxruntime


def graph_load_error(path: Path, backend: str, err: Exception) -> EngineDirError:
    """The error for a graph file a backend cannot load: damaged, or not what the manifest says."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return EngineDirError(
        f"{path} cannot be loaded by {backend} ({first[:300]}): the file is damaged or not an ONNX graph; "
        "rebuild the engines (opening with verify=True checks every file's sha256 first)"
    )


def available_providers() -> list[str]:
    return list(_onnxruntime().get_available_providers())


class GraphSession:
    """One graph: an ONNX Runtime session whose feeds are checked against the graph's `GraphSpec`.

    Args:
        path: the .onnx file.
        spec: its descriptor (from the manifest).
        providers: ONNX Runtime execution providers in priority order; ones this onnxruntime
            build lacks are an error, not a silent CPU fallback.
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
    """

    def __init__(self, path: Path, spec: GraphSpec, providers=DEFAULT_PROVIDERS, threads: int | None = None):
        ort = _onnxruntime()
        providers = list(providers)
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        missing = [p for p in names if p not in ort.get_available_providers()]
        if missing:
            raise ValueError(
                f"execution providers {missing} are not in this onnxruntime build (it has "
                f"{ort.get_available_providers()}); for CUDA / TensorRT install onnxruntime-gpu"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        self.spec = spec
        state = ort.capi.onnxruntime_pybind11_state
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except (state.InvalidProtobuf, state.InvalidGraph, state.NoSuchFile) as err:  # the file, not the provider
            raise graph_load_error(path, "ONNX Runtime", err) from err
        graph_inputs = [i.name for i in self.session.get_inputs()]
        if graph_inputs != spec.input_names:
            raise ValueError(f"{path}: graph inputs {graph_inputs} do not match the manifest's {spec.input_names}")

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Checks `feed` against the descriptor, then runs; outputs in the descriptor's order."""
        self.spec.check_feed(feed)
        return self.session.run(self.spec.output_names, feed)
