"""ONNX Runtime behind the `Graph` interface: CPU, and the CUDA and TensorRT execution providers.

`InferenceSession.run` is thread-safe (each call binds its own I/O), so one session serves every
thread. Resident inputs are OrtValues on the first provider's device, bound with I/O binding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.contract import GraphSpec
from runtime.graph import Graph, check_input_names
from runtime.manifest import EngineDirError

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
ORT_TRT_CACHE = "ort_trt_cache"  # engine and timing caches of the TensorRT provider, inside the engine directory


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


def onnxruntime_providers(backend: str, spec: GraphSpec, directory: Path, fp16: bool = False) -> list:
    """The execution-provider list of an ONNX Runtime backend (`runtime.backends.BACKENDS`)."""
    if backend == "onnxruntime":
        return list(DEFAULT_PROVIDERS)
    if backend == "onnxruntime-cuda":
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    if backend == "onnxruntime-tensorrt":
        cache = str(directory / ORT_TRT_CACHE)
        options = {
            "device_id": 0,
            # fp16 applies to every layer here (no fp32 escape for attention, unlike the native plans).
            "trt_fp16_enable": fp16,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache,
            "trt_profile_min_shapes": spec.profile_text(0),
            "trt_profile_opt_shapes": spec.profile_text(1),
            "trt_profile_max_shapes": spec.profile_text(2),
        }
        return [
            ("TensorrtExecutionProvider", options),
            ("CUDAExecutionProvider", {"device_id": 0}),
            "CPUExecutionProvider",
        ]
    raise ValueError(f"{backend!r} is not an ONNX Runtime backend")


class OnnxRuntimeGraph(Graph):
    """One graph in an ONNX Runtime session.

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
        self.device = "cpu" if names[0] == "CPUExecutionProvider" else "cuda"
        self._ort = ort
        state = ort.capi.onnxruntime_pybind11_state
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except (state.InvalidProtobuf, state.InvalidGraph, state.NoSuchFile) as err:  # the file, not the provider
            raise graph_load_error(path, "ONNX Runtime", err) from err
        check_input_names(spec, path, [i.name for i in self.session.get_inputs()])

    def _place(self, arrays: dict[str, np.ndarray]) -> dict:
        return {n: self._ort.OrtValue.ortvalue_from_numpy(a, self.device, 0) for n, a in arrays.items()}

    def _run(self, feed: dict[str, np.ndarray], resident: dict) -> list[np.ndarray]:
        if not resident:
            return self.session.run(self.spec.output_names, feed)
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        for name, value in resident.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.spec.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
