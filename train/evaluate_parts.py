"""SLiMe on the synthetic world's part data: per-part IoU, 1-sample and 10-sample, next to trivial baselines.

    python -m train.evaluate_parts --out benchmarks/results/slime-synth            # defaults below
    python -m train.evaluate_parts --categories 3 --settings 1 --test-images 20 --out /tmp/car
    python -m train.evaluate_parts --categories 0 3 --settings 1 --split val \
        --thresholds 0 0.02 0.05 0.1 0.2 --out benchmarks/results/slime-threshold   # choosing a setting

Per category and setting, embeddings are optimised with `train.slime.optimise` on the base
model: 1-sample on the first training image, validated on itself; 10-sample on the first ten,
validated on the `val` split (the released README's protocol). They are then evaluated on the
`test` split with SLiMe's protocol (METHOD_SPEC 2.7): per image and per class present in the
ground truth (background included) IoU at the output size, averaged per class over the images,
"Average" = the mean over classes. Baselines on the same test images: "all background" and
"prior" (each pixel's majority label over the ten training masks: what the training masks say
without looking at the test image). `--split val` scores the validation images instead (for
choosing settings without touching the test split); `--thresholds` adds a row per test-time token
threshold, scored with the same embeddings. Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from modeling.presets import build_model
from modeling.slime import SlimeModel
from runtime.files import write_text
from runtime.patches import Patching
from segdata.categories import CATEGORIES
from segdata.metrics import average, mean_part_ious
from segdata.synthetic import SyntheticParts
from segdata.world import SyntheticWorld
from train.slime import SlimeRecipe, optimise, segment_examples

FAMILY_EXAMPLES = (0, 3, 6, 9, 12, 15, 18, 21)  # one category of each of the 8 shape families


def prior_labels(masks: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(H, W) per-pixel majority label of the training masks (ties to the lower label)."""
    votes = np.stack([(np.stack(masks) == k).sum(axis=0) for k in range(num_classes)])
    return votes.argmax(axis=0).astype(np.uint8)


def evaluate_category(category: int, settings: list[int], args: argparse.Namespace) -> dict:
    world = SyntheticWorld(resolution=args.resolution, seed=args.world_seed)
    train = [SyntheticParts(world, category, "train", 10)[i] for i in range(10)]
    val = [SyntheticParts(world, category, "val", args.val_images)[i] for i in range(args.val_images)]
    test = [SyntheticParts(world, category, "test", args.test_images)[i] for i in range(args.test_images)]
    names = SyntheticParts(world, category).class_names
    k = len(names)
    scored = test if args.split == "test" else val
    images, truths = [image for image, _ in scored], [labels for _, labels in scored]
    rows = {
        "all background": mean_part_ious(((np.zeros_like(t), t) for t in truths), k),
        "prior (10 masks)": mean_part_ious(((prior_labels([m for _, m in train], k), t) for t in truths), k),
    }
    timings = {}
    for shots in settings:
        components = build_model(args.base, seed=args.seed)
        model = SlimeModel.from_base(components, names)
        patching = Patching(model.resolution)
        recipe = SlimeRecipe(epochs=args.epochs, seed=args.seed)
        examples = train[:shots]
        record = optimise(model, examples, examples if shots == 1 else val, recipe, patching, progress=False)
        rows[f"SLiMe {shots}-sample"] = mean_part_ious(zip(segment_examples(model, images, patching), truths), k)
        timings[f"{shots}-sample"] = {
            "optimisation_s": record["wall_time_s"],
            "steps": record["steps"],
            "best_epoch": record["best_epoch"],
        }
        print(f"  {shots}-sample: {average(rows[f'SLiMe {shots}-sample']):.3f} in {record['wall_time_s']:.0f} s")
        for threshold in args.thresholds:
            model.settings = dataclasses.replace(model.settings, token_threshold=threshold)
            predictions = segment_examples(model, images, patching)
            rows[f"SLiMe {shots}-sample, threshold {threshold:g}"] = mean_part_ious(zip(predictions, truths), k)
    return {
        "category": category,
        "name": CATEGORIES[category].name,
        "class_names": names,
        "rows": {method: {names[c]: round(v, 4) for c, v in ious.items()} for method, ious in rows.items()},
        "average": {method: round(average(ious), 4) for method, ious in rows.items()},
        "timing": timings,
    }


def markdown(results: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", ""]
    methods = list(dict.fromkeys(m for r in results for m in r["average"]))

    def cell(values: dict, method: str) -> str:
        return f"{100 * values[method]:.1f}" if method in values else "-"

    lines += ["| category | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for r in results:
        lines.append(f"| {r['name']} | " + " | ".join(cell(r["average"], m) for m in methods) + " |")
    for subset, label in ((results, "mean"), ([r for r in results if len(r["average"]) == len(methods)], "")):
        if label or len(subset) not in (0, len(results)):
            means = {m: float(np.mean([r["average"][m] for r in subset if m in r["average"]])) for m in methods}
            name = label or f"mean of the {len(subset)} with every row"
            lines.append(f"| **{name}** | " + " | ".join(f"**{cell(means, m)}**" for m in methods) + " |")
    lines += ["", "Per part (IoU %, background included):", ""]
    for r in results:
        parts = r["class_names"]
        lines += [f"**{r['name']}**", "", "| method | " + " | ".join(parts) + " | Average |"]
        lines.append("| --- |" + " --- |" * (len(parts) + 1))
        for method, ious in r["rows"].items():
            cells = [f"{100 * ious[p]:.1f}" if p in ious else "-" for p in parts]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {100 * r['average'][method]:.1f} |")
        timing = "; ".join(f"{s}: {t['optimisation_s']:.0f} s, {t['steps']} steps" for s, t in r["timing"].items())
        lines += ["", f"Optimisation time: {timing}.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="synth", help="base preset (the synthetic world is drawn at its size)")
    parser.add_argument("--categories", type=int, nargs="+", default=list(FAMILY_EXAMPLES))
    parser.add_argument(
        "--ten-sample-categories", type=int, nargs="*", default=None, help="run 10-sample on these only"
    )
    parser.add_argument("--settings", type=int, nargs="+", default=[1, 10], choices=(1, 10), help="samples")
    parser.add_argument("--test-images", type=int, default=50)
    parser.add_argument("--split", choices=("test", "val"), default="test", help="the images scored")
    parser.add_argument(
        "--thresholds", type=float, nargs="*", default=[], help="also score these test-time token thresholds"
    )
    parser.add_argument("--val-images", type=int, default=4, help="10-sample validation images")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=128, help="synthetic image side")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="optimisation seed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m train.evaluate_parts " + " ".join(sys.argv[1:] if argv is None else argv)
    start, results = time.time(), []
    for category in args.categories:
        print(f"category {category} ({CATEGORIES[category].name})", flush=True)
        settings = [
            s
            for s in args.settings
            if s == 1 or args.ten_sample_categories is None or category in args.ten_sample_categories
        ]
        results.append(evaluate_category(category, settings, args))
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"command": command, "wall_time_s": round(time.time() - start, 1), "categories": results}
    write_text(args.out / "results.json", json.dumps(summary, indent=1))
    table = markdown(results, command)
    write_text(args.out / "results.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
