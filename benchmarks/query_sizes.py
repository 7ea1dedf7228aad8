"""Resident memory of one segmenter over many distinct query sizes: does it stay bounded?

    python -m benchmarks.query_sizes --engines engines/synth --sizes 1000 --backend auto \\
        [--shape-cache N] --out benchmarks/results/query-sizes

A service sees queries of every size. OpenVINO's CPU plugin prepares kernels per input shape and
caches them (`runtime.openvino_graph.OPENVINO_SHAPE_CACHE`); unbounded, that cache grew the process by
about 0.7 MB per new size. This runs `--sizes` queries, each of a size not seen before (height and
width drawn without repeats from the engines' side range), and records the resident set after
every query. Written: `sizes.json` (the curve) and a line per checkpoint on stdout. The figure to
read is the growth over the second half of the run, when any bounded cache is full.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.memory import _trim_heap, resident_bytes
from runtime import openvino_graph
from runtime.backends import BACKENDS
from runtime.cli import reporting_errors
from runtime.fewshot import FewShotSegmenter
from runtime.files import write_text
from runtime.manifest import Manifest


def distinct_sizes(count: int, low: int, high: int, seed: int = 0) -> list[tuple[int, int]]:
    """`count` different (height, width) pairs with sides in [low, high]."""
    rng = np.random.default_rng(seed)
    sides = np.arange(low, high + 1)
    if count > len(sides) ** 2:
        raise ValueError(f"only {len(sides) ** 2} distinct sizes lie in {low}..{high}")
    flat = rng.choice(len(sides) ** 2, size=count, replace=False)
    return [(int(sides[i // len(sides)]), int(sides[i % len(sides)])) for i in flat]


def measure(engines: Path, backend: str, sizes: list[tuple[int, int]], threads: int | None) -> dict:
    segmenter = FewShotSegmenter.from_dir(engines, backend=backend, threads=threads)
    rng = np.random.default_rng(1)
    side = segmenter.manifest.resolution
    image = (rng.random((side, side, 3)) * 255).astype(np.uint8)
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4 : side // 2, side // 4 : side // 2] = 1
    segmenter.set_support(image, mask)
    segmenter.segment(image)
    _trim_heap()
    start_mb = resident_bytes() / 2**20
    curve, started = [], time.time()
    for i, (height, width) in enumerate(sizes):
        query = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        segmenter.segment(query)
        if (i + 1) % 10 == 0 or i + 1 == len(sizes):
            _trim_heap()
            curve.append((i + 1, round(resident_bytes() / 2**20 - start_mb, 1)))
        if (i + 1) % max(1, len(sizes) // 10) == 0:
            print(f"{i + 1:5d} sizes: +{curve[-1][1]:.1f} MB ({time.time() - started:.0f} s)", flush=True)
    half = curve[len(curve) // 2][1]
    return {
        "backend": segmenter.backend,
        "sizes": len(sizes),
        "start_mb": round(start_mb, 1),
        "growth_mb": curve[-1][1],
        "growth_second_half_mb": round(curve[-1][1] - half, 1),
        "seconds": round(time.time() - started, 1),
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--sizes", type=int, default=1000, help="distinct query sizes to run")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--min-side", type=int, default=None, help="default: the engines' minimum side")
    parser.add_argument("--max-side", type=int, default=None, help="default: twice the model resolution")
    parser.add_argument(
        "--shape-cache",
        type=int,
        default=None,
        help=f"OpenVINO's per-shape kernel cache capacity (default {openvino_graph.OPENVINO_SHAPE_CACHE}; 5000 was "
        "OpenVINO's own default, before the bound)",
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for sizes.json")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    with reporting_errors():  # a bad engine directory or input: one line, an exit code (runtime.cli)
        if args.shape_cache is not None:
            openvino_graph.OPENVINO_SHAPE_CACHE = args.shape_cache
        manifest = Manifest.read(args.engines, verify=False)
        low = args.min_side or manifest.rules["sides"]["min"]
        high = args.max_side or min(manifest.rules["sides"]["max"], 2 * manifest.resolution)
        result = measure(args.engines, args.backend, distinct_sizes(args.sizes, low, high), args.threads)
        result["shape_cache"] = openvino_graph.OPENVINO_SHAPE_CACHE
        print(
            f"{result['backend']}: {result['sizes']} distinct sizes in {result['seconds']} s, resident set "
            f"+{result['growth_mb']} MB (+{result['growth_second_half_mb']} MB over the second half), "
            f"OpenVINO shape cache {result['shape_cache']}"
        )
        if args.out is not None:
            write_text(args.out / "sizes.json", json.dumps(result, indent=1), overwrite=args.overwrite)
        return 0


if __name__ == "__main__":
    sys.exit(main())
