"""What a benchmark records about the machine it ran on, and the latency summary every benchmark reports."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

# The instruction-set features the CPU backends use (OpenVINO bf16 / int8 kernels).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx512_fp16")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_name() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_features() -> list[str]:
    """The ISA_FLAGS this CPU has, as /proc/cpuinfo names them."""
    flags = next((line.split(":", 1)[1].split() for line in _cpuinfo() if line.startswith("flags")), [])
    return [flag for flag in ISA_FLAGS if flag in flags]


def percentiles(latencies_ms: list[float]) -> dict:
    """n, p50, p90, p95, p99 and max of per-call milliseconds."""
    values = np.asarray(latencies_ms)
    return {
        "n": int(values.size),
        "p50_ms": float(np.percentile(values, 50)),
        "p90_ms": float(np.percentile(values, 90)),
        "p95_ms": float(np.percentile(values, 95)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
    }


def library_versions() -> dict:
    """The versions of what the figures depend on: Python, torch, ONNX Runtime, OpenVINO (those installed)."""
    import importlib.metadata

    versions = {"python": platform.python_version()}
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def machine_record(threads: int | None) -> dict:
    """What a result records of the machine: CPU model, the ISA features the backends use, threads, libraries."""
    return {"cpu": cpu_name(), "isa_features": cpu_features(), "threads": threads, "libraries": library_versions()}


def machine_line(record: dict) -> str:
    """A `machine_record` in words for a report's first line: "AMD EPYC (avx2, ...), 2 threads"."""
    features = ", ".join(record["isa_features"]) or "none of the listed ISA features"
    return f"{record['cpu']} ({features}), {record['threads']} threads"
