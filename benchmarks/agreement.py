"""Do the exported graphs + runtime give the PyTorch pipeline's masks? Per-mask IoU on held-out episodes.

    python -m benchmarks.agreement --engines engines/synth-diffews --episodes 100 --shots 1 5

The model folder is the one the engines were built from (`manifest.json` names it; --model
overrides). Episodes are the synthetic world's held-out categories of the model's fold; query
and supports are resized to a few sizes other than the model's so the in-graph resizing is
exercised too. Times the support stage (encode the shots into a bank) and the query stage
(segment one query against it) of both sides, per episode. Prints a markdown table and writes
JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from modeling.diffews_folder import read_config, source_folder
from modeling.predictor import TorchFewShotSegmenter
from runtime.backends import BACKENDS
from runtime.cli import reporting_errors
from runtime.fewshot import FewShotSegmenter
from runtime.files import write_text
from segdata.metrics import mask_iou
from segdata.samples import held_out_episodes


def agreement(reference: TorchFewShotSegmenter, segmenter: FewShotSegmenter, episodes: list) -> dict:
    """Per-mask IoU between the runtime and the PyTorch pipeline: the same calls on both, episode by episode."""
    ious = []
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
        ious.append(mask_iou(*masks))
    ious = np.asarray(ious)
    return {
        "shots": shots,
        "episodes": len(episodes),
        "mean_iou": float(ious.mean()),
        "min_iou": float(ious.min()),
        "fraction_at_least_0.99": float((ious >= 0.99).mean()),
        **{f"{stage}_ms": 1000 * total / len(episodes) for stage, total in seconds.items()},
    }


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
        reference = TorchFewShotSegmenter.from_folder(folder)  # fp32, the VAE read-out: the method's own pipeline
        fold = int(read_config(folder).get("data", {}).get("fold", 0))
        r = reference.model.resolution
        rows = []
        for shots in args.shots:
            # sizes cycle through square, wider, taller and smaller, so the in-graph resizing is exercised
            episodes = held_out_episodes(r, shots, args.episodes, fold=fold, seed=args.seed, pool=1000, world_seed=0)
            rows.append(agreement(reference, segmenter, episodes))
        print(f"{args.engines} on {segmenter.backend} against the PyTorch pipeline (fp32):")
        print(
            "| shots | episodes | mean IoU | min IoU | masks with IoU >= 0.99 | support ms: torch / runtime "
            "| query ms: torch / runtime |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for row in rows:
            print(
                f"| {row['shots']} | {row['episodes']} | {row['mean_iou']:.4f} | {row['min_iou']:.4f} "
                f"| {100 * row['fraction_at_least_0.99']:.1f} % | {row['torch_support_ms']:.1f} / {row['runtime_support_ms']:.1f} "
                f"| {row['torch_query_ms']:.1f} / {row['runtime_query_ms']:.1f} |"
            )
        if args.json:
            write_text(
                args.json,
                json.dumps(
                    {"engines": str(args.engines), "backend": segmenter.backend, "model": str(folder), "rows": rows},
                    indent=1,
                ),
            )
        return 0


if __name__ == "__main__":
    sys.exit(main())
