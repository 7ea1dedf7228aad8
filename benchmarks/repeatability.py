"""What repeatability costs on OpenVINO: the query graph with its snippets on (as before) and off (the default now).

    python -m benchmarks.repeatability --engines engines/synth --runs 20 [--precision bf16] \\
        [--sizes 128x128 96x160 256x256] --out benchmarks/results/repeatability-synth

For each query size, both compilations of `query_segmenter` (`runtime.openvino_graph.openvino_config`,
with and without `SNIPPETS_MODE=DISABLE`) run the same feed `--runs` times, interleaved call by
call so that machine noise hits both alike. Reported per size and setting: how many different
masks the runs gave, and the median and worst milliseconds per query. Written: `repeatability.json`
and `repeatability.md`, with the CPU's model name (bf16 and AMX behave differently across CPUs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_name
from benchmarks.report import write_report
from runtime.cli import reporting_errors
from runtime.fewshot import FewShotSegmenter
from runtime.manifest import Manifest
from runtime.openvino_graph import openvino_config
from runtime.sections import QUERY_SEGMENTER
from segdata.samples import held_out_episodes, resize_array

SETTINGS = {"snippets on (before)": False, "snippets off (default)": True}


def episode(side: int, shots: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Held-out synthetic supports and a query at the model's side."""
    (ep,) = held_out_episodes(side, shots, 1, seed=3, pool=100, world_seed=0)
    return ep.support_images, ep.support_masks, ep.query_image


def bank_and_query(engines: Path, threads: int | None) -> tuple[FewShotSegmenter, np.ndarray]:
    """A segmenter holding the fp32 bank (onnxruntime) of a held-out 1-shot support, and a held-out query at the model side."""
    segmenter = FewShotSegmenter.from_dir(engines, backend="onnxruntime", threads=threads)
    images, masks, query = episode(segmenter.manifest.resolution, 1)
    segmenter.set_support(images, masks)
    return segmenter, query


def snippet_requests(
    engines: Path, precision: str, threads: int | None, settings: dict[str, bool], perf_count: bool = False
) -> dict:
    """An OpenVINO infer request of the query graph per setting (name -> snippets off?), each compiled
    as the runtime compiles it (`openvino_config`) but for OpenVINO's snippets."""
    import openvino as ov

    core, path = ov.Core(), engines / Manifest.read(engines).graph(QUERY_SEGMENTER).file
    requests = {}
    for name, snippets_off in settings.items():
        config = {k: v for k, v in openvino_config(precision, threads).items() if k != "SNIPPETS_MODE"}
        if snippets_off:
            config["SNIPPETS_MODE"] = "DISABLE"
        if perf_count:
            config["PERF_COUNT"] = True
        requests[name] = core.compile_model(str(path), "CPU", config).create_infer_request()
    return requests


def measure(engines: Path, precision: str, sizes: list[tuple[int, int]], runs: int, threads: int | None) -> dict:
    segmenter, query = bank_and_query(engines, threads)
    compiled = snippet_requests(engines, precision, threads, SETTINGS)
    rows = []
    for height, width in sizes:
        feed = {"image": resize_array(query, width, height), "threshold": np.array(0.25, np.float32), **segmenter.bank}
        outputs = {name: set() for name in SETTINGS}
        times = {name: [] for name in SETTINGS}
        for request in compiled.values():  # warm up: the first run of a shape prepares its kernels
            request.infer(feed)
        for _ in range(runs):
            for name, request in compiled.items():
                start = time.perf_counter()
                request.infer(feed)
                times[name].append((time.perf_counter() - start) * 1000)
                outputs[name].add(request.get_output_tensor(0).data.tobytes())
        for name in SETTINGS:
            rows.append(
                {
                    "size": f"{width}x{height}",
                    "setting": name,
                    "distinct_masks": len(outputs[name]),
                    "median_ms": round(float(np.median(times[name])), 1),
                    "max_ms": round(float(np.max(times[name])), 1),
                }
            )
            print(rows[-1], flush=True)
    return {
        "engines": str(engines),
        "resolution": segmenter.manifest.resolution,
        "precision": precision,
        "threads": threads,
        "runs": runs,
        "cpu": cpu_name(),
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"OpenVINO {result['precision']} query graph of `{result['engines']}` ({result['resolution']} px model), "
        f"{result['runs']} runs per size and setting, interleaved, threads {result['threads'] or 'default'}, "
        f"CPU: {result['cpu']}.",
        "",
        "| query size | setting | distinct masks | median ms | worst ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['size']} | {r['setting']} | {r['distinct_masks']} | {r['median_ms']} | {r['max_ms']} |")
    return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--precision", choices=("bf16", "f32"), default="bf16")
    parser.add_argument("--sizes", nargs="+", default=None, help="WIDTHxHEIGHT (default: the model side, 3:5, 2x)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: OpenVINO's)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    with reporting_errors():  # a bad engine directory or input: one line, an exit code (runtime.cli)
        side = Manifest.read(args.engines).resolution
        sizes = [parse_size(s) for s in args.sizes] if args.sizes else [(side, side), (side * 5 // 4, side * 3 // 4)]
        result = measure(args.engines, args.precision, sizes, args.runs, args.threads)
        print(markdown(result))
        if args.out is not None:
            write_report(args.out, "repeatability", result, markdown(result), overwrite=args.overwrite)
        return 0


if __name__ == "__main__":
    sys.exit(main())
