"""The query-encoder stage alone at SD 2.1 size: the VAE encoder against the distilled one, PyTorch eager fp32.

    python -m benchmarks.query_encoder_stage --calls 5 --out benchmarks/results/sd21-query-encoder-stage

Random SD 2.1 weights (speed does not depend on them), one 512 x 512 image, the two encoders
called in turn (interleaved, after one warm-up each) so that the machine's drift hits both alike.
Reports each one's calls, median, min and max, the ratio of the medians and of the minimums, and
the machine's record. The whole-query rows are `benchmarks.latency`'s; this is the stage the
distilled encoder replaces, cheap enough to measure on a busy machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.machine import machine_record
from benchmarks.report import write_report
from modeling.presets import random_diffews
from runtime.sections import QUERY_ENCODERS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5, help="timed calls per encoder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = random_diffews("sd21")
    x = torch.rand(1, 3, args.side, args.side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    times: dict[str, list[float]] = {name: [] for name in QUERY_ENCODERS}
    with torch.no_grad():
        for name in times:
            model.encode_query(x, name)  # warm-up
        for _ in range(args.calls):
            for name in times:
                start = time.perf_counter()
                model.encode_query(x, name)
                times[name].append(1000 * (time.perf_counter() - start))
    rows = {
        name: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "calls_ms": v}
        for name, v in times.items()
    }
    result = {
        "side": args.side,
        "rows": rows,
        "ratio_of_medians": rows["vae"]["median_ms"] / rows["distilled"]["median_ms"],
        "ratio_of_minimums": rows["vae"]["min_ms"] / rows["distilled"]["min_ms"],
        "machine": machine_record(args.threads),
    }
    lines = [
        f"Query encoder stage at {args.side} px, SD 2.1 architecture (random weights), PyTorch eager fp32, "
        f"{args.threads} threads, {args.calls} interleaved calls each; {result['machine']['cpu']}.",
        "",
        "| encoder | median ms | min ms | max ms |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {n} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['max_ms']:.0f} |" for n, r in rows.items()]
    lines += [
        "",
        f"VAE / distilled: {result['ratio_of_medians']:.2f}x (medians), {result['ratio_of_minimums']:.2f}x (minimums).",
    ]
    write_report(args.out, "query-encoder-stage", result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
