"""Do the exported graphs + runtime give the PyTorch pipeline's masks? Per-mask IoU on held-out episodes, per size.

    python -m benchmarks.agreement --engines engines/synth-diffews --episodes 100 --shots 1 5

The model folder is the one the engines were built from (`manifest.json` names it; --model
overrides). Episodes are the synthetic world's held-out categories of the model's fold. Episode i
has its query at size i of `QUERY_SIZES` (square and non-square, larger and smaller than the model)
and its supports at the following sizes, so that one episode mixes support sizes and the in-graph
resizing of every size is exercised. Reported per shot count and query size: the mean and the
minimum per-mask IoU between the two sides; the bar applies to the worst size, never to the
average alone. Next to it, each side's mIoU against the ground truth (HSNet's accumulation, per
class) on the same episodes. Times the support stage (encode the shots into a bank) and the query
stage (segment one query against it) of both sides. Prints markdown tables and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.machine import machine_record
from modeling.diffews_folder import read_config, source_folder
from modeling.predictor import TorchFewShotSegmenter
from runtime.backends import BACKENDS
from runtime.cli import reporting_errors
from runtime.fewshot import FewShotSegmenter
from runtime.files import write_text
from segdata.metrics import mask_iou
from segdata.samples import SIZE_FACTORS, episode_at_sizes, held_out_episodes, size_cycle
from train.evaluate import IouMeter

# (width, height) x the model resolution: square, wider, taller, smaller, and smaller and taller
# (96 x 160 at 128 px, where the default path's agreement was found lowest).
QUERY_FACTORS = (*SIZE_FACTORS, (0.75, 1.25))


def mixed_size_episodes(resolution: int, shots: int, count: int, fold: int, seed: int) -> list:
    """`count` held-out episodes; episode i's query at size i % n of QUERY_FACTORS, its support j at size i + 1 + j."""
    sizes = size_cycle(resolution, len(QUERY_FACTORS), QUERY_FACTORS)
    episodes = held_out_episodes(
        resolution, shots, count, fold=fold, seed=seed, pool=1000, factors=((1.0, 1.0),), world_seed=0
    )
    return [
        episode_at_sizes(ep, sizes[i % len(sizes)], [sizes[(i + 1 + j) % len(sizes)] for j in range(shots)])
        for i, ep in enumerate(episodes)
    ]


def agreement(reference: TorchFewShotSegmenter, segmenter: FewShotSegmenter, episodes: list) -> dict:
    """Per-mask IoU between the runtime and the PyTorch pipeline (the same calls on both), per query size,
    and each side's mIoU against the ground truth."""
    by_size: dict[str, list[float]] = {}
    truth = {"torch": IouMeter(), "runtime": IouMeter()}
    seconds = dict.fromkeys(("torch_support", "torch_query", "runtime_support", "runtime_query"), 0.0)
    shots = episodes[0].shots
    for ep in tqdm(episodes, desc=f"{shots}-shot"):
        masks = []
        for side, predictor in (("torch", reference), ("runtime", segmenter)):
            start = time.perf_counter()
            predictor.set_support(ep.support_images, ep.support_masks)
            middle = time.perf_counter()
            masks.append(predictor.segment(ep.query_image))
            seconds[f"{side}_support"] += middle - start
            seconds[f"{side}_query"] += time.perf_counter() - middle
            truth[side].update(ep.category, masks[-1] > 0, ep.query_mask > 0)
        height, width = ep.query_image.shape[:2]
        by_size.setdefault(f"{width}x{height}", []).append(mask_iou(*masks))
    sizes = [
        {"size": size, "episodes": len(ious), "mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious))}
        for size, ious in by_size.items()
    ]
    ious = np.concatenate([by_size[row["size"]] for row in sizes])
    worst = min(sizes, key=lambda row: row["mean_iou"])
    return {
        "shots": shots,
        "episodes": len(episodes),
        "mean_iou": float(ious.mean()),
        "min_iou": float(ious.min()),
        "worst_size": worst["size"],
        "worst_size_mean_iou": worst["mean_iou"],
        "fraction_at_least_0.99": float((ious >= 0.99).mean()),
        "torch_miou": truth["torch"].miou(),
        "runtime_miou": truth["runtime"].miou(),
        "sizes": sizes,
        **{f"{stage}_ms": 1000 * total / len(episodes) for stage, total in seconds.items()},
    }


def report(rows: list[dict]) -> str:
    """The markdown tables: the summary per shot count, then every (shots, query size) row."""
    lines = [
        "| shots | episodes | mean IoU | worst size: mean IoU | min IoU | masks with IoU >= 0.99 "
        "| mIoU vs ground truth: torch / runtime | support ms: torch / runtime | query ms: torch / runtime |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['shots']} | {row['episodes']} | {row['mean_iou']:.4f} | {row['worst_size']}: "
            f"{row['worst_size_mean_iou']:.4f} | {row['min_iou']:.4f} | {100 * row['fraction_at_least_0.99']:.1f} % "
            f"| {row['torch_miou']:.1f} / {row['runtime_miou']:.1f} "
            f"| {row['torch_support_ms']:.1f} / {row['runtime_support_ms']:.1f} "
            f"| {row['torch_query_ms']:.1f} / {row['runtime_query_ms']:.1f} |"
        )
    lines += ["", "| shots | query size | episodes | mean IoU | min IoU |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines += [
            f"| {row['shots']} | {s['size']} | {s['episodes']} | {s['mean_iou']:.4f} | {s['min_iou']:.4f} |"
            for s in row["sizes"]
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True, help="engine directory (export.build_engine)")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the manifest's source)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch and runtime threads")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="what runs the engines (default: the runtime's, auto)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    with reporting_errors():  # a bad engine directory or input: one line, an exit code (runtime.cli)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        segmenter = FewShotSegmenter.from_dir(args.engines, threads=args.threads, backend=args.backend)
        folder = source_folder(segmenter.manifest.model, args.model)  # ModelFolderError: one line, exit 3
        # fp32, the VAE read-out: the method's own pipeline, keeping the support tokens the engines keep
        reference = TorchFewShotSegmenter.from_folder(folder, selection=segmenter.selection)
        fold = int(read_config(folder).get("data", {}).get("fold", 0))
        r = reference.model.resolution
        rows = []
        for shots in args.shots:
            episodes = mixed_size_episodes(r, shots, args.episodes, fold=fold, seed=args.seed)
            rows.append(agreement(reference, segmenter, episodes))
        print(f"{args.engines} on {segmenter.backend} against the PyTorch pipeline (fp32):")
        print(report(rows))
        if args.json:
            write_text(
                args.json,
                json.dumps(
                    {
                        "engines": str(args.engines),
                        "backend": segmenter.backend,
                        "profile": segmenter.manifest.diffews.profile,
                        "readout": segmenter.manifest.diffews.readout.decoder,
                        "query_encoder": segmenter.manifest.diffews.query_encoder,
                        "model": str(folder),
                        "machine": machine_record(args.threads),
                        "rows": rows,
                    },
                    indent=1,
                ),
            )
        return 0


if __name__ == "__main__":
    sys.exit(main())
