"""The runtime rows of `benchmarks.latency`, each measured in a process of its own that never loads torch.

    python -m benchmarks.latency_runtime --engines engines/synth-diffews --backend openvino-bf16 \\
        --repeats 10 --warmup 1 --threads 2 --json row.json

`benchmarks.latency` starts this once per engine directory and backend, so a runtime row runs
the way the runtime is deployed: in a process that never loads PyTorch, free of the OpenMP workers
and allocator state the reference rows leave behind. `benchmarks.latency --in-process` measures the
rows in the benchmark's own process instead, after the PyTorch rows. At SD 2.1 size on an Intel
Xeon with AMX the two ways gave speed-ups within this shared machine's run-to-run variation
(`benchmarks/results/sd21-profiles-amx-fresh` and `-in-process`), so the choice is about what a
row stands for, not a gain. Nothing here imports torch; a test checks that.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.memory import PeakResident
from benchmarks.stage_split import openvino_split, profiled_split
from runtime.backends import BACKENDS, OPENVINO_PRECISIONS
from runtime.cli import reporting_errors
from runtime.fewshot import FewShotSegmenter
from runtime.files import write_text
from runtime.manifest import Manifest
from segdata.samples import held_out_episodes


def timed(fn, repeats: int, warmup: int) -> dict:
    """Median, min, p90 and max wall time of fn() in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "p90_ms": float(np.percentile(times, 90)),
        "max_ms": max(times),
    }


def peak_extra_mb(fn) -> float:
    """The resident memory `fn()` needs above what the process holds when it starts, in MB."""
    with PeakResident() as peak:
        fn()
    return peak.extra_mb


def sample_episode(resolution: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """One held-out synthetic 1-shot episode at the model resolution: ((image, mask), query).

    The same in every process (fixed seeds), so the PyTorch rows and each runtime row see one episode.
    """
    (episode,) = held_out_episodes(resolution, 1, 1, seed=3, pool=60, world_seed=0)
    return (episode.support_images[0], episode.support_masks[0].astype(np.uint8)), episode.query_image


def _time_runtime(
    engines: Path, backend: str, episode, repeats: int, warmup: int, threads: int | None
) -> tuple[dict, dict, dict]:
    """(support timing, query timing, the query graph's feed) with a FewShotSegmenter on `backend`."""
    segmenter = FewShotSegmenter.from_dir(engines, threads=threads, verify=False, backend=backend)
    (image, mask), query = episode
    # Memory on the first runs: ONNX Runtime's arena (and OpenVINO's memory pool) grows to what a
    # graph needs then keeps it, so later runs show no growth although they use the same memory.
    memory = {
        "support": peak_extra_mb(lambda: segmenter.set_support(image, mask)),
        "query": peak_extra_mb(lambda: segmenter.segment(query)),
    }
    support = timed(lambda: segmenter.set_support(image, mask), repeats, warmup)
    query_ms = timed(lambda: segmenter.segment(query), repeats, warmup + 1)  # ORT: the 2nd run is still slow
    support["peak_extra_mb"], query_ms["peak_extra_mb"] = memory["support"], memory["query"]
    feed = {"image": query, "threshold": np.array(segmenter.threshold, np.float32), **segmenter.bank}
    return support, query_ms, feed


def measure_runtime(engines: Path, backend: str, repeats: int, warmup: int, threads: int | None) -> dict:
    """One runtime row in this process: support and query timings, peak memory, and the query's stage split."""
    manifest = Manifest.read(engines, verify=False)
    diffews, episode = manifest.diffews, sample_episode(manifest.resolution)
    # The segmenter's graphs are freed before the profiling run loads the query graph again.
    support, query, feed = _time_runtime(engines, backend, episode, repeats, warmup, threads)
    decoder, encoder = diffews.readout.decoder, diffews.query_encoder
    print(
        f"  runtime ({engines}, {encoder} encoder, {decoder}, {backend}) support {support['median_ms']:.1f} ms, "
        f"query {query['median_ms']:.1f} ms, {query['peak_extra_mb']:.0f} MB",
        flush=True,
    )
    if backend in OPENVINO_PRECISIONS:
        split = openvino_split(engines, feed, threads, OPENVINO_PRECISIONS[backend])
    else:
        split = profiled_split(engines, feed, threads)
    return {
        "engines": str(engines),
        "backend": backend,
        "decoder": decoder,
        "query_encoder": encoder,
        "attention_block": diffews.attention_block,
        "support": support,
        "query": query,
        "split": split,
        "process": {"pid": os.getpid(), "torch_loaded": "torch" in sys.modules},
    }


def measure_runtime_in_fresh_process(
    engines: Path, backend: str, repeats: int, warmup: int, threads: int | None
) -> dict:
    """`measure_runtime` in a new Python process (this module's CLI); its progress lines go to this stdout."""
    with tempfile.TemporaryDirectory(prefix="latency-row-") as folder:
        out = Path(folder) / "row.json"
        command = [sys.executable, "-m", "benchmarks.latency_runtime", "--engines", str(engines)]
        command += ["--backend", backend, "--repeats", str(repeats), "--warmup", str(warmup), "--json", str(out)]
        if threads:
            command += ["--threads", str(threads)]
        finished = subprocess.run(command, check=False)
        if finished.returncode != 0:
            raise RuntimeError(
                f"the runtime row for {engines} on {backend} failed in its process (exit {finished.returncode}); "
                "its message is above"
            )
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True, help="one engine directory")
    parser.add_argument("--backend", required=True, choices=BACKENDS, help="a runtime backend (runtime.backends)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, required=True, help="where the row is written")
    args = parser.parse_args(argv)
    with reporting_errors():  # a bad engine directory or backend: one line, an exit code (runtime.cli)
        row = measure_runtime(args.engines, args.backend, args.repeats, args.warmup, args.threads)
        write_text(args.json, json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
