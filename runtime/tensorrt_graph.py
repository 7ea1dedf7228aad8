"""TensorRT plans behind the `Graph` interface, through Polygraphy's `TrtRunner` (GPU only; never run here).

A plan runs only with the TensorRT version and GPU generation that built it, so the manifest
lists every plan built for a graph (`export.tensorrt_build`) and `select_plan` picks the one for
this machine, found with `gpu_compute_capability`. An execution context is not thread-safe: each
concurrent `run` takes its own runner from a `RequestPool`.
"""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

import numpy as np

from runtime.contract import GraphSpec
from runtime.graph import Graph, RequestPool
from runtime.manifest import EngineDirError, file_sha256


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


class TensorRTGraph(Graph):
    """A graph's TensorRT plan; resident inputs are Polygraphy `DeviceArray`s."""

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

    def _place(self, arrays: dict[str, np.ndarray]) -> dict:
        cuda = importlib.import_module("polygraphy.cuda")
        return {n: cuda.DeviceArray(shape=a.shape, dtype=a.dtype).copy_from(a) for n, a in arrays.items()}

    def _run(self, feed: dict[str, np.ndarray], resident: dict) -> list[np.ndarray]:
        with self.runners.take() as runner:
            outputs = runner.infer({**feed, **resident}, check_inputs=False)
            return [np.array(outputs[name]) for name in self.spec.output_names]  # copies: the runner reuses its buffers
