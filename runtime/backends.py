"""Execution backends behind one interface: a graph that checks its feeds, runs, and can keep inputs resident.

    graph = open_graph(directory, manifest, "query_segmenter", backend="onnxruntime-cuda")
    bank = graph.keep({"key_00": ..., ...})        # uploaded once (device memory on a GPU)
    mask = graph.run({"image": ..., "threshold": ...}, resident=bank)[0]

| backend | what runs the graph | resident inputs |
| --- | --- | --- |
| `onnxruntime` | ONNX Runtime, the given providers (CPU by default) | OrtValues, bound with I/O binding |
| `onnxruntime-cuda` | ONNX Runtime's CUDA provider | OrtValues in GPU memory |
| `onnxruntime-tensorrt` | ONNX Runtime's TensorRT provider (engine and timing caches in `DIR/ort_trt_cache`, profiles from the descriptors), CUDA for the rest | OrtValues in GPU memory |
| `tensorrt` | the directory's TensorRT plans (`export.tensorrt_build`), through Polygraphy's `TrtRunner` | Polygraphy `DeviceArray`s |
| `openvino` | OpenVINO's CPU plugin, fp32; one infer request per concurrent caller (a pool) | `openvino.Tensor`s (copies), set per run |
| `openvino-bf16` | OpenVINO's CPU plugin, bf16 arithmetic with fp32 accumulation (CPUs with AVX512-BF16 or AMX) for the per-query graphs; the support encoder, run once per support set, stays fp32 (bf16 there costs mask agreement and saves no per-query time) | as `openvino` |
| `auto` | `openvino-bf16` where OpenVINO is installed and the CPU has bf16, else `onnxruntime` (`resolve_backend`) | |

Everything GPU-side and OpenVINO are imported lazily, so the CPU runtime needs only numpy and onnxruntime.

Concurrency: every graph here may be run from many threads at once, each call getting the outputs
of its own feed. ONNX Runtime's `InferenceSession.run` is thread-safe (each call binds its own
I/O); OpenVINO and TensorRT contexts are not, so those graphs hand each concurrent call its own
infer request / execution context from a pool (`RequestPool`), never a process-wide lock. A call
that fails discards the request it used, so a failure cannot leave state behind for the next call.

Determinism: the same feed gives bit-identical outputs on every CPU backend. For `openvino-bf16`
this needs OpenVINO's snippets (its JIT-fused attention and element-wise subgraphs) switched
off: with them, bf16 attention on more than one thread gave a different mask on most runs of
the same query (measured on Xeon AVX512-BF16, OpenVINO 2026.4; fp32 snippets are repeatable).
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from runtime.contract import SUPPORT_ENCODER, GraphSpec
from runtime.manifest import EngineDirError, Manifest, file_sha256
from runtime.sessions import GraphSession, graph_load_error

BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "openvino", "openvino-bf16")
OPENVINO_PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}
ORT_TRT_CACHE = "ort_trt_cache"
# OpenVINO's CPU plugin caches the kernels it prepares per input shape; the default (5000 entries)
# let the process grow by about 0.7 MB with every new query size. A bound keeps memory flat while
# recently used sizes stay fast.
OPENVINO_SHAPE_CACHE = 64


def check_threads(threads: Any) -> int | None:
    """`threads` as given to a backend: None (the backend's default) or a positive int."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or None (the backend's default), got {threads!r}")
    return threads


class RequestPool:
    """Idle per-call execution states (OpenVINO infer requests, TensorRT contexts) of one compiled graph.

    A caller takes an idle one, or a new one when all are busy, so concurrent calls never share
    one; it goes back to the pool only when the call succeeded. The lock guards the idle list
    only: inference itself runs outside it. The pool holds as many states as calls ever ran at once.
    """

    def __init__(self, create: Callable[[], Any]):
        self._create = create
        self._idle: list = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[Any]:
        with self._lock:
            state = self._idle.pop() if self._idle else None
        if state is None:
            state = self._create()
        yield state  # an exception propagates and the state is dropped: its tensors and shapes are unknown
        with self._lock:
            self._idle.append(state)


class Graph(Protocol):
    """What the segmenters need of a graph, whatever runs it."""

    spec: GraphSpec

    def keep(self, arrays: dict[str, np.ndarray]) -> dict:
        """Checks `arrays` against the descriptor and places them where the graph reads them (once)."""
        ...

    def run(self, feed: dict[str, np.ndarray], resident: dict | None = None) -> list[np.ndarray]:
        """Outputs (host numpy, the descriptor's order) for `feed` plus the `resident` inputs from `keep`."""
        ...


def profile_option(spec: GraphSpec, which: int) -> str:
    """ONNX Runtime TensorRT provider profile string, `image:32x32x3,mask:32x32` (which: 0 min, 1 opt, 2 max)."""
    shapes = [(t.name, (t.min_shape, t.opt_shape, t.max_shape)[which]) for t in spec.inputs if t.dynamic_axes]
    return ",".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in shapes)


def onnxruntime_providers(backend: str, spec: GraphSpec, directory: Path, fp16: bool = False) -> list:
    """The execution-provider list of an ONNX Runtime backend."""
    if backend == "onnxruntime":
        return ["CPUExecutionProvider"]
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
            "trt_profile_min_shapes": profile_option(spec, 0),
            "trt_profile_opt_shapes": profile_option(spec, 1),
            "trt_profile_max_shapes": profile_option(spec, 2),
        }
        return [
            ("TensorrtExecutionProvider", options),
            ("CUDAExecutionProvider", {"device_id": 0}),
            "CPUExecutionProvider",
        ]
    raise ValueError(f"{backend!r} is not an ONNX Runtime backend")


class OnnxRuntimeGraph:
    """A graph in ONNX Runtime; resident inputs are OrtValues on the first provider's device, bound per run."""

    def __init__(self, path: Path, spec: GraphSpec, providers: list, threads: int | None = None):
        self.session = GraphSession(path, spec, providers, threads)
        self.spec = spec
        first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        self.device = "cpu" if first == "CPUExecutionProvider" else "cuda"

    def keep(self, arrays: dict[str, np.ndarray]) -> dict:
        ort = importlib.import_module("onnxruntime")
        specs = {t.name: t for t in self.spec.inputs}
        for name, array in arrays.items():
            if name not in specs:
                raise ValueError(f"{self.spec.name}: no input named {name!r}")
            specs[name].check(array, self.spec.name)
        return {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device, 0) for n, a in arrays.items()}

    def run(self, feed: dict[str, np.ndarray], resident: dict | None = None) -> list[np.ndarray]:
        if not resident:
            return self.session.run(feed)
        _check_split_feed(self.spec, feed, resident)
        binding = self.session.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, value in resident.items():
            binding.bind_ortvalue_input(name, value)
        for name in self.spec.output_names:
            binding.bind_output(name, "cpu")
        self.session.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def _check_split_feed(spec: GraphSpec, feed: dict[str, np.ndarray], resident: dict) -> None:
    """The per-run feed plus the resident inputs must cover the graph's inputs exactly once."""
    names = list(feed) + list(resident)
    missing = [n for n in spec.input_names if n not in names]
    extra = sorted({n for n in names if n not in spec.input_names or names.count(n) > 1})
    if missing or extra:
        raise ValueError(f"{spec.name}: inputs missing {missing}, unknown or given twice {extra}")
    specs = {t.name: t for t in spec.inputs}
    for name, array in feed.items():
        specs[name].check(np.asarray(array), spec.name)


def _openvino():
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
        ov = importlib.import_module("openvino")
    except ImportError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_backend(backend: str, providers: list | None = None) -> str:
    """`auto` -> the fastest CPU backend this machine has (`openvino-bf16` or `onnxruntime`); others unchanged.

    With `providers` (an ONNX Runtime setting), `auto` means `onnxruntime`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend != "auto":
        return backend
    return "openvino-bf16" if providers is None and cpu_has_bf16() else "onnxruntime"


class OpenVinoGraph:
    """A graph compiled by OpenVINO for the CPU, from the same .onnx file ONNX Runtime reads.

    Args:
        precision: "f32", or "bf16": OpenVINO's bf16 inference precision (bf16 operands with fp32
            accumulation in convolutions and matmuls; bf16 has fp32's exponent range, so no
            fp16-style overflow). Refused on a CPU without bf16 instructions rather than run at
            another precision than the one asked for.
        threads: inference threads per call (None: OpenVINO's default, one per physical core).

    Thread-safe: each concurrent `run` gets its own infer request (`RequestPool`). Repeatable:
    snippets are off for bf16 (module docstring); kernels prepared per input shape are cached
    up to `OPENVINO_SHAPE_CACHE` shapes.
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
        graph_inputs = [port.get_any_name() for port in model.inputs]
        if graph_inputs != spec.input_names:
            raise ValueError(f"{path}: graph inputs {graph_inputs} do not match the manifest's {spec.input_names}")
        self.spec, self.precision = spec, precision
        self.compiled = core.compile_model(model, "CPU", openvino_config(precision, threads))
        self.requests = RequestPool(self.compiled.create_infer_request)
        self._tensor = ov.Tensor

    def keep(self, arrays: dict[str, np.ndarray]) -> dict:
        specs = {t.name: t for t in self.spec.inputs}
        for name, array in arrays.items():
            if name not in specs:
                raise ValueError(f"{self.spec.name}: no input named {name!r}")
            specs[name].check(array, self.spec.name)
        # Copies (shared_memory=False): a caller changing its arrays later cannot change the bank.
        return {name: self._tensor(np.ascontiguousarray(array), shared_memory=False) for name, array in arrays.items()}

    def run(self, feed: dict[str, np.ndarray], resident: dict | None = None) -> list[np.ndarray]:
        if resident:
            _check_split_feed(self.spec, feed, resident)
        else:
            self.spec.check_feed(feed)
        feed = {name: np.asarray(array, order="C") for name, array in feed.items()}  # keeps 0-d arrays 0-d
        with self.requests.take() as request:
            request.infer({**feed, **(resident or {})})
            return [request.get_tensor(name).data.copy() for name in self.spec.output_names]


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


def select_plan(plans: list[dict], trt_version: str, capability: str, graph: str) -> dict:
    """The plan built by this TensorRT version for this GPU generation, or an error saying how to build one."""
    for plan in plans:
        if plan["tensorrt"] == trt_version and plan["compute_capability"] == capability:
            return plan
    built = ", ".join(f"TensorRT {p['tensorrt']} / sm {p['compute_capability']}" for p in plans) or "none"
    raise EngineDirError(
        f"{graph}: no TensorRT plan for TensorRT {trt_version} on a GPU of compute capability {capability} "
        f"(built: {built}); build one on this machine: python -m export.tensorrt_build DIR"
    )


class GpuUnavailable(RuntimeError):
    """No CUDA GPU (or no nvidia-smi to ask) on this machine."""


def gpu_compute_capability() -> str:
    """'8.7' for the first CUDA device, from nvidia-smi."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as err:
        raise GpuUnavailable(
            f"no CUDA GPU found through nvidia-smi ({err}); where nvidia-smi is missing (older Jetsons) "
            "give the compute capability by hand, e.g. 8.7 for Orin"
        ) from err
    if not out:
        raise GpuUnavailable("nvidia-smi lists no GPU")
    return out[0]


class TensorRTGraph:
    """A graph's TensorRT plan run through Polygraphy's TrtRunner (GPU only; not run in this project's CI)."""

    def __init__(self, directory: Path, spec: GraphSpec, plans: list[dict], capability: str | None = None):
        try:
            trt = importlib.import_module("tensorrt")
            backend = importlib.import_module("polygraphy.backend.trt")
        except ImportError as err:
            raise RuntimeError(
                "the tensorrt backend needs the tensorrt and polygraphy packages on an NVIDIA GPU machine "
                f"({err}); use backend='onnxruntime' elsewhere"
            ) from err
        plan = select_plan(plans, trt.__version__, capability or gpu_compute_capability(), spec.name)
        path = directory / plan["file"]
        if not path.is_file() or file_sha256(path) != plan["sha256"]:
            raise EngineDirError(f"{path} is missing or does not match its sha256 in manifest.json; rebuild it")
        self.spec = spec
        engine = backend.engine_from_bytes(path.read_bytes())

        def runner():  # one execution context per concurrent call: a context is not thread-safe
            trt_runner = backend.TrtRunner(engine)
            trt_runner.activate()
            return trt_runner

        self.runners = RequestPool(runner)

    def keep(self, arrays: dict[str, np.ndarray]) -> dict:
        cuda = importlib.import_module("polygraphy.cuda")
        specs = {t.name: t for t in self.spec.inputs}
        for name, array in arrays.items():
            specs[name].check(array, self.spec.name)
        return {
            n: cuda.DeviceArray(shape=a.shape, dtype=a.dtype).copy_from(np.ascontiguousarray(a))
            for n, a in arrays.items()
        }

    def run(self, feed: dict[str, np.ndarray], resident: dict | None = None) -> list[np.ndarray]:
        resident = resident or {}
        _check_split_feed(self.spec, feed, resident)
        with self.runners.take() as runner:
            outputs = runner.infer({**feed, **resident}, check_inputs=False)
            return [np.array(outputs[name]) for name in self.spec.output_names]  # copies: the runner reuses its buffers


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
        precision = "f32" if name == SUPPORT_ENCODER else OPENVINO_PRECISIONS[backend]
        return OpenVinoGraph(directory / entry.file, entry.spec, precision, threads)
    if providers is None:
        providers = onnxruntime_providers(backend, entry.spec, directory, fp16)
    return OnnxRuntimeGraph(directory / entry.file, entry.spec, list(providers), threads)
