"""int8 (NNCF post-training quantization, OpenVINO CPU) of the DiffewS query graph, one stage at a time.

    python -m export.build_engine --out engines/synth-default --max-shots 5 --selection all
    python -m benchmarks.int8 --engines engines/synth-default --out benchmarks/results/int8-synth

Variants: every weighted stage in int8 (`all`), and each stage alone (`encoder`, `unet`,
`readout`; the others stay fp32, `export.quantize`). Each is calibrated on `--calibration`
training-category episodes (support banks from the engines' fp32 support encoder) and compared
with the same graph in fp32 on OpenVINO (the PyTorch pipeline's masks, `exact` parity) over
`--episodes` held-out episodes with queries and supports of mixed sizes: per-mask IoU per query
size (mean and minimum; the bar applies to the worst size) and each one's mIoU against the
ground truth. Latency: p50 / p90 / max of the query graph at the model resolution over
`--calls` calls, fp32 and every variant interleaved. Writes `int8.json` and `.md` with the
machine's record (int8 speed depends on AVX-512 VNNI / AMX, which the record lists).

`--precision bf16` (a CPU with AVX512-BF16 or AMX) runs the layers left out of int8 in bf16, as
the default profile does, and adds the fp32 graph run in bf16 as a row of its own: there int8 has
to beat bf16, not fp32, to be worth its agreement.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.agreement import mixed_size_episodes
from benchmarks.machine import machine_line, machine_record, percentiles
from benchmarks.report import write_report
from export.quantize import STAGES, calibration_feeds, quantize_query_graph
from runtime.fewshot import FewShotSegmenter
from runtime.openvino_graph import cpu_has_bf16, openvino_config
from runtime.sections import QUERY_SEGMENTER
from segdata.episodes import EpisodeSampler
from segdata.metrics import mask_iou
from segdata.synthetic import SyntheticFewShot
from segdata.world import SyntheticWorld
from train.evaluate import IouMeter

VARIANTS = {"all": tuple(STAGES), **{stage: (stage,) for stage in STAGES}}


def training_episodes(resolution: int, count: int, fold: int) -> list:
    """`count` 1-shot episodes of the fold's training categories (calibration never sees held-out classes)."""
    source = SyntheticFewShot(SyntheticWorld(resolution=resolution, seed=0), fold=fold, split="trn", size=4 * count)
    return list(EpisodeSampler(source, 1).fixed_episodes(count, seed=1))


def compare(reference, candidate, feeds: list[dict], episodes: list) -> dict:
    """Per-size mask IoU of `candidate` against `reference` (compiled models), and both mIoUs against ground truth."""
    by_size: dict[str, list[float]] = {}
    truth = {"fp32": IouMeter(), "candidate": IouMeter()}
    for feed, episode in zip(feeds, episodes):
        want = reference.create_infer_request().infer(feed)[0]
        got = candidate.create_infer_request().infer(feed)[0]
        height, width = episode.query_image.shape[:2]
        by_size.setdefault(f"{width}x{height}", []).append(mask_iou(got, want))
        truth["fp32"].update(episode.category, want > 0, episode.query_mask > 0)
        truth["candidate"].update(episode.category, got > 0, episode.query_mask > 0)
    sizes = {size: {"mean_iou": float(np.mean(v)), "min_iou": float(np.min(v))} for size, v in by_size.items()}
    worst = min(sizes, key=lambda s: sizes[s]["mean_iou"])
    return {
        "mean_iou": float(np.mean([i for v in by_size.values() for i in v])),
        "min_iou": float(min(i for v in by_size.values() for i in v)),
        "worst_size": worst,
        "worst_size_mean_iou": sizes[worst]["mean_iou"],
        "sizes": sizes,
        "fp32_miou": truth["fp32"].miou(),
        "candidate_miou": truth["candidate"].miou(),
    }


def latencies(compiled: dict, feed: dict, calls: int) -> dict:
    """name -> percentiles of one query-graph call, the models called in turn after a warm-up each."""
    requests = {name: model.create_infer_request() for name, model in compiled.items()}
    for request in requests.values():
        request.infer(feed)
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(calls):
        for name, request in requests.items():
            start = time.perf_counter()
            request.infer(feed)
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: {**percentiles(v), "calls_ms": v} for name, v in times.items()}


def markdown(result: dict) -> str:
    lines = [
        f"int8 query graph of `{result['engines']}` ({result['resolution']} px model), NNCF {result['nncf']} "
        f"post-training quantization, {result['calibration']} training-category calibration episodes; "
        f"layers left out of int8 run in {result['precision']}; {machine_line(result['machine'])}, OpenVINO CPU.",
        "",
        f"Agreement with the fp32 graph over {result['episodes']} held-out 1-shot episodes of mixed sizes, and "
        "mIoU against the ground truth (fp32: "
        f"{next(iter(result['variants'].values()))['agreement']['fp32_miou']:.1f}):",
        "",
        "| variant (int8 stages; bf16: none) | mask IoU mean | worst size (mean) | min | mIoU | quantize s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in result["variants"].items():
        a = row["agreement"]
        lines.append(
            f"| {name} | {a['mean_iou']:.4f} | {a['worst_size']}: {a['worst_size_mean_iou']:.4f} | "
            f"{a['min_iou']:.4f} | {a['candidate_miou']:.1f} | {row['quantize_s']:.0f} |"
        )
    lines += [
        "",
        f"Query-graph latency at {result['resolution']} x {result['resolution']}, {result['calls']} interleaved calls:",
        "",
    ]
    bases = [b for b in ("fp32", "bf16") if b in result["latency"]]
    lines += [
        "| graph | p50 ms | p90 ms | max ms | " + " | ".join(f"speed-up vs {b} (p50)" for b in bases) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in bases) + " |",
    ]
    for name, row in result["latency"].items():
        ratios = " | ".join(f"{result['latency'][b]['p50_ms'] / row['p50_ms']:.2f}x" for b in bases)
        lines.append(f"| {name} | {row['p50_ms']:.1f} | {row['p90_ms']:.1f} | {row['max_ms']:.1f} | {ratios} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True, help="DiffewS engine directory (fp32)")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--calibration", type=int, default=32, help="training-category calibration episodes")
    parser.add_argument("--episodes", type=int, default=100, help="held-out episodes for the agreement")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per graph (at least 10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--precision", choices=("f32", "bf16"), default="f32", help="what the layers left out of int8 run in"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.calls < 10:
        parser.error("--calls: at least 10 calls, for a p90 that means something")
    if args.precision == "bf16" and not cpu_has_bf16():
        parser.error("--precision bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); use f32")
    import nncf
    import openvino as ov

    nncf.set_log_level(logging.WARNING)  # else a line per op kept in fp32, thousands per variant

    segmenter = FewShotSegmenter.from_dir(args.engines, threads=args.threads, backend="onnxruntime")
    manifest = segmenter.manifest
    if manifest.precision != "fp32":
        raise SystemExit(f"error: {args.engines} holds {manifest.precision} graphs; quantize fp32 ones")
    graph = args.engines / manifest.graph(QUERY_SEGMENTER).file
    resolution, fold = manifest.resolution, 0
    calibration = calibration_feeds(segmenter, training_episodes(resolution, args.calibration, fold))
    held_out = mixed_size_episodes(resolution, 1, args.episodes, fold, seed=11)
    feeds = calibration_feeds(segmenter, held_out)
    core, config = ov.Core(), openvino_config(args.precision, args.threads)
    compiled = {"fp32": core.compile_model(core.read_model(str(graph)), "CPU", openvino_config("f32", args.threads))}
    variants = {}
    if args.precision == "bf16":  # the baseline int8 competes with here: no int8, everything in bf16
        compiled["bf16"] = core.compile_model(core.read_model(str(graph)), "CPU", config)
        variants["bf16"] = {"stages": [], "quantize_s": 0.0}
        variants["bf16"]["agreement"] = compare(compiled["fp32"], compiled["bf16"], feeds, held_out)
    for name in args.variants:
        start = time.perf_counter()
        model = quantize_query_graph(graph, calibration, VARIANTS[name])
        seconds = time.perf_counter() - start
        compiled[name] = core.compile_model(model, "CPU", config)
        variants[name] = {"stages": list(VARIANTS[name]), "quantize_s": seconds}
        variants[name]["agreement"] = compare(compiled["fp32"], compiled[name], feeds, held_out)
        print(f"{name}: {variants[name]['agreement']['mean_iou']:.4f} mean mask IoU", flush=True)
    square = next(f for f, ep in zip(feeds, held_out) if ep.query_image.shape[:2] == (resolution, resolution))
    result = {
        "engines": str(args.engines),
        "resolution": resolution,
        "nncf": nncf.__version__,
        "calibration": args.calibration,
        "episodes": args.episodes,
        "calls": args.calls,
        "threads": args.threads,
        "precision": args.precision,
        "variants": variants,
        "latency": latencies(compiled, square, args.calls),
        "machine": machine_record(args.threads),
    }
    text = markdown(result)
    write_report(args.out, "int8", result, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
