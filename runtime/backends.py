"""Execution backends behind one interface (`runtime.graph.Graph`): choosing one and opening a graph on it.

    graph = open_graph(directory, manifest, "query_segmenter", backend="onnxruntime-cuda")
    bank = graph.upload({"key_00": ..., ...})      # uploaded once (device memory on a GPU)
    mask = graph.run({"image": ..., "threshold": ...}, resident=bank)[0]

| backend | what runs the graph | resident inputs |
| --- | --- | --- |
| `onnxruntime` | ONNX Runtime, the given providers (CPU by default) | OrtValues, bound with I/O binding |
| `onnxruntime-cuda` | ONNX Runtime's CUDA provider | OrtValues in GPU memory |
| `onnxruntime-tensorrt` | ONNX Runtime's TensorRT provider (engine and timing caches in `DIR/ort_trt_cache`, profiles from the descriptors), CUDA for the rest | OrtValues in GPU memory |
| `tensorrt` | the directory's TensorRT plans (`export.tensorrt_build`), through Polygraphy's `TrtRunner` | Polygraphy `DeviceArray`s |
| `openvino` | OpenVINO's CPU plugin, fp32; one infer request per concurrent caller (a pool) | `openvino.Tensor`s (copies), set per run |
| `openvino-bf16` | OpenVINO's CPU plugin, bf16 arithmetic with fp32 accumulation (CPUs with AVX512-BF16 or AMX) for the graphs the manifest allows it (`reduced_precision`); the DiffewS support encoder, run once per support set, stays fp32 (bf16 there costs mask agreement and saves no per-query time) | as `openvino` |
| `auto` | `openvino-bf16` where OpenVINO is installed and the CPU has bf16 (and the engines' profile is not `exact`), else `onnxruntime` (`resolve_backend`) | |

Everything GPU-side and OpenVINO are imported lazily, so the CPU runtime needs only numpy and onnxruntime.
Each backend is one module: `runtime.sessions` (ONNX Runtime), `runtime.openvino_graph`,
`runtime.tensorrt_graph`.

Concurrency: every graph here may be run from many threads at once, each call getting the outputs
of its own feed. ONNX Runtime's `InferenceSession.run` is thread-safe (each call binds its own
I/O); OpenVINO and TensorRT contexts are not, so those graphs hand each concurrent call its own
infer request / execution context from a pool (`RequestPool`), never a process-wide lock. A call
that fails discards the request it used, so a failure cannot leave state behind for the next call.

Determinism: the same feed gives bit-identical outputs on every CPU backend (for `openvino-bf16`
see `runtime.openvino_graph`).
"""

from __future__ import annotations

from pathlib import Path

from runtime.graph import Graph, check_threads
from runtime.manifest import EngineDirError, GraphEntry, Manifest
from runtime.openvino_graph import OpenVinoGraph, cpu_has_bf16
from runtime.sessions import OnnxRuntimeGraph, onnxruntime_providers
from runtime.tensorrt_graph import TensorRTGraph

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "openvino", "openvino-bf16")
OPENVINO_PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}


def resolve_backend(backend: str, providers: list | None = None, reduced_precision: bool = True) -> str:
    """`auto` -> the fastest CPU backend this machine has (`openvino-bf16` or `onnxruntime`); others unchanged.

    With `providers` (an ONNX Runtime setting), or without `reduced_precision` (engines of the
    `exact` profile, `runtime.profiles`), `auto` means `onnxruntime`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    return "openvino-bf16" if providers is None and reduced_precision and cpu_has_bf16() else "onnxruntime"


def openvino_precision(backend: str, entry: GraphEntry) -> str:
    """The arithmetic graph `entry` runs in on an OpenVINO `backend`: `openvino-bf16`'s bf16 only for
    the graphs the manifest allows it (`reduced_precision`), f32 otherwise."""
    return OPENVINO_PRECISIONS[backend] if entry.reduced_precision else "f32"


def open_graph(
    directory: Path,
    manifest: Manifest,
    name: str,
    backend: str = "onnxruntime",
    providers: list | None = None,
    threads: int | None = None,
    fp16: bool = False,
) -> Graph:
    """Graph `name` of an engine directory on `backend` (see the module table).

    Args:
        providers: overrides the provider list of the `onnxruntime` backend.
        fp16: `onnxruntime-tensorrt` only: let TensorRT run layers in fp16.
    """
    backend = resolve_backend(backend, providers)
    threads = check_threads(threads)
    entry = manifest.graph(name)
    if backend == "tensorrt":
        plans = manifest.tensorrt_plans.get(name, [])
        if not plans:
            raise EngineDirError(
                f"{directory} has no TensorRT plans for {name}; build them on the GPU machine with "
                f"python -m export.tensorrt_build {directory}"
            )
        return TensorRTGraph(directory, entry.spec, plans)
    if providers is not None and backend != "onnxruntime":
        raise ValueError(f"providers= applies to backend 'onnxruntime' only; backend {backend!r} sets its own")
    if backend in OPENVINO_PRECISIONS:
        return OpenVinoGraph(directory / entry.file, entry.spec, openvino_precision(backend, entry), threads)
    if providers is None:
        providers = onnxruntime_providers(backend, entry.spec, directory, fp16)
    return OnnxRuntimeGraph(directory / entry.file, entry.spec, list(providers), threads)
