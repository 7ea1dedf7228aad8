"""Throughput of the batched query graph against the batch size B, and its masks against B single runs.

    python -m export.build_engine --out engines/synth-batch8 --query-batch 8
    python -m benchmarks.query_batch --engines engines/synth-batch8 --batches 1 2 4 8 \
        --out benchmarks/results/query-batch-synth

For each backend, one support set and B distinct held-out queries at the model resolution:
`segment_batch` of the B queries (one run of `query_batch_segmenter`; B = 1 is the
single-query graph, what `segment` runs), timed over `--calls` calls after a warm-up, the
batch sizes interleaved call by call so the machine's drift hits every B alike. Reports per B:
p50 / p90 / max of a call, queries per second at p50, the per-query time and the throughput
against B = 1 in the same run, and whether every batched mask equals the query's single run
(pixel for pixel). Writes `query-batch.json` and `.md` with the machine's record.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_line, machine_record, percentiles
from benchmarks.report import write_report
from runtime.backends import BACKENDS
from runtime.fewshot import FewShotSegmenter
from segdata.samples import held_out_episodes


def batch_rows(segmenter: FewShotSegmenter, queries: list[np.ndarray], batches: list[int], calls: int) -> dict:
    """B -> {"calls_ms", percentiles, "queries_per_s", "equal_to_single"}; the first B queries form batch B."""
    single = [segmenter.segment(q) for q in queries[: max(batches)]]
    times: dict[int, list[float]] = {b: [] for b in batches}
    equal = {}
    for b in batches:  # warm-up, and the masks compared with single runs
        masks = segmenter.segment_batch(queries[:b])
        equal[b] = all(np.array_equal(m, s) for m, s in zip(masks, single))
    for _ in range(calls):
        for b in batches:
            start = time.perf_counter()
            segmenter.segment_batch(queries[:b])
            times[b].append(1000 * (time.perf_counter() - start))
    rows = {}
    for b in batches:
        stats = percentiles(times[b])
        rows[b] = {
            **stats,
            "calls_ms": times[b],
            "queries_per_s": 1000 * b / stats["p50_ms"],
            "equal_to_single": equal[b],
        }
    base = rows[batches[0]]["queries_per_s"]
    for row in rows.values():
        row["throughput_vs_first"] = row["queries_per_s"] / base
    return rows


def markdown(result: dict) -> str:
    lines = [
        f"Batched query graph `{result['engines']}` ({result['resolution']} px model, {result['shots']} shot), "
        f"{machine_line(result['machine'])}; "
        f"{result['calls']} interleaved calls per batch size after a warm-up.",
        "",
        "| backend | B | call p50 ms | p90 ms | max ms | ms per query (p50) | queries/s | throughput vs B = "
        f"{result['batches'][0]} | masks equal to single runs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for backend, rows in result["backends"].items():
        for b, r in rows.items():
            lines.append(
                f"| {backend} | {b} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['max_ms']:.1f} | "
                f"{r['p50_ms'] / int(b):.1f} | {r['queries_per_s']:.2f} | {r['throughput_vs_first']:.2f}x | "
                f"{'yes' if r['equal_to_single'] else 'NO'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True, help="engine directory built with --query-batch")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8], help="batch sizes (ascending)")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["onnxruntime", "openvino"])
    parser.add_argument("--calls", type=int, default=10, help="timed calls per batch size (at least 10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.calls < 10:
        parser.error("--calls: at least 10 calls, for a p90 that means something")
    if args.batches != sorted(set(args.batches)) or args.batches[0] < 1:
        parser.error("--batches: distinct positive sizes in ascending order, e.g. 1 2 4 8")
    result = None
    for backend in args.backends:
        segmenter = FewShotSegmenter.from_dir(args.engines, threads=args.threads, backend=backend)
        if args.batches[-1] > segmenter.max_query_batch:
            raise SystemExit(
                f"error: {args.engines} takes at most {segmenter.max_query_batch} queries per run; rebuild it with "
                f"--query-batch {args.batches[-1]} or pass smaller --batches"
            )
        resolution = segmenter.manifest.resolution
        if result is None:
            episodes = held_out_episodes(resolution, 1, count=args.batches[-1], seed=3, factors=((1, 1),))
            result = {
                "engines": str(args.engines),
                "resolution": resolution,
                "shots": 1,
                "batches": args.batches,
                "calls": args.calls,
                "threads": args.threads,
                "backends": {},
                "machine": machine_record(args.threads),
            }
        segmenter.set_support(episodes[0].support_images, episodes[0].support_masks)
        queries = [ep.query_image for ep in episodes]
        result["backends"][backend] = batch_rows(segmenter, queries, args.batches, args.calls)
        print(f"{backend}: done", flush=True)
    text = markdown(result)
    write_report(args.out, "query-batch", result, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
