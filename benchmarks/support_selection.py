"""More shots, paired: held-out mIoU per shot count and support-selection rule, with bootstrap intervals.

    python -m export.build_engine --out engines/synth-10shot --max-shots 10 --selection all
    python -m benchmarks.support_selection --engines engines/synth-10shot --episodes 500 \\
        --out benchmarks/results/support-selection-synth

Paired episodes: `--episodes` held-out episodes of `--max-shots` supports each (HSNet's sampling,
seed 0, at the model resolution); the k-shot setting uses the same query and the first k of the
same supports. Each support is encoded once per episode; every rule then reduces the k-shot bank
(`runtime.support_selection`, budget `--budget` shots) and the query graph runs on it. A rule only
changes a bank of more shots than the budget, so k <= budget is one row for every rule.

mIoU is HSNet's: per class, foreground intersection and union summed over its episodes, then the
mean over classes. The 95 % intervals come from `--bootstrap` resamples of the episodes (the same
resamples for every row), as do the intervals of paired differences (k shots against k' shots,
and each rule against "all"). Query latency per shot count and rule is measured on the same
engines, interleaved. Writes support_selection.json and support_selection.md into --out. A
benchmark: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.machine import cpu_features, cpu_name, percentiles
from benchmarks.report import write_report
from runtime.backends import BACKENDS
from runtime.cli import refuse_to_overwrite, reporting_errors
from runtime.fewshot import FewShotSegmenter
from runtime.images import load_mask
from runtime.support_selection import RULES, SupportSelection
from segdata.episodes import EpisodeSampler
from segdata.samples import episode_at_size
from segdata.synthetic import SyntheticFewShot
from segdata.world import SyntheticWorld


def held_out(resolution: int, shots: int, count: int, fold: int, seed: int, pool: int):
    """`count` episodes of `shots` supports from the fold's held-out classes, at the model resolution."""
    source = SyntheticFewShot(SyntheticWorld(resolution=resolution, seed=0), fold=fold, split="val", size=pool)
    for episode in EpisodeSampler(source, shots).fixed_episodes(count, seed):
        yield episode_at_size(episode, resolution, resolution)


def row_name(rule: str, shots: int, budget: int) -> str:
    return f"{shots}:{'any' if shots <= budget else rule}"


def encode_shots(segmenter: FewShotSegmenter, episode) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """An episode's supports -> (each shot's full bank, each shot's (H, W) 0/1 mask as the runtime reads it)."""
    shots = [segmenter.encode_shot(im, m) for im, m in zip(episode.support_images, episode.support_masks)]
    return shots, [load_mask(m, "support mask") for m in episode.support_masks]


def measure_masks(segmenter: FewShotSegmenter, args: argparse.Namespace) -> tuple[list[int], dict[str, np.ndarray]]:
    """Per episode its class, and per row (shots, rule) the (E, 2) foreground intersection and union."""
    grids = segmenter.manifest.diffews.bank_grids
    classes, counts = [], {}
    episodes = held_out(segmenter.manifest.resolution, max(args.shots), args.episodes, args.fold, args.seed, args.pool)
    for episode in tqdm(episodes, total=args.episodes, desc="episodes", unit="ep"):
        shots, shot_masks = encode_shots(segmenter, episode)
        truth = episode.query_mask.astype(bool)
        classes.append(episode.category)
        for k in args.shots:
            bank = {n: np.concatenate([s[n] for s in shots[:k]]) for n in segmenter.bank_names}
            masks = shot_masks[:k]
            for rule in args.rules:
                name = row_name(rule, k, args.budget)
                if name in counts and len(counts[name]) == len(classes):
                    continue  # k <= budget: the same bank for every rule
                reduced = SupportSelection(rule, args.budget).reduce(bank, masks, grids)
                pred = segmenter.segment(episode.query_image, support=segmenter.make_bank(reduced)).astype(bool)
                counts.setdefault(name, []).append(((pred & truth).sum(), (pred | truth).sum()))
    return classes, {name: np.asarray(rows, np.int64) for name, rows in counts.items()}


def class_miou(classes: np.ndarray, counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """HSNet mIoU (x 100) for each row of `weights` (R, E): how often each episode is drawn."""
    labels, index = np.unique(classes, return_inverse=True)
    onehot = np.zeros((len(classes), len(labels)))
    onehot[np.arange(len(classes)), index] = 1
    inter = weights @ (onehot * counts[:, :1])  # [R, C]
    union = weights @ (onehot * counts[:, 1:])
    present = (weights @ onehot) > 0
    iou = np.where(present, 100 * inter / np.maximum(union, 1), np.nan)
    return np.nanmean(iou, axis=1)


def comparisons(shots: list[int], rules: list[str], budget: int) -> list[tuple[str, str]]:
    """(row, row it is compared with): each rule's shot counts pairwise, and each rule against "all"."""
    pairs = []
    for rule in rules:
        names = [row_name(rule, k, budget) for k in shots]
        pairs += [(high, low) for i, low in enumerate(names) for high in names[i + 1 :]]
        if rule != "all" and "all" in rules:
            pairs += [(row_name(rule, k, budget), row_name("all", k, budget)) for k in shots if k > budget]
    return list(dict.fromkeys(pairs))


def summarise(classes: list[int], counts: dict[str, np.ndarray], pairs, resamples: int, seed: int) -> dict:
    """Per row: mIoU and its 95 % interval; per pair, the paired difference and its interval."""
    classes = np.asarray(classes)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(classes), (resamples, len(classes)))
    weights = np.zeros((resamples, len(classes)))
    np.add.at(weights, (np.repeat(np.arange(resamples), len(classes)), draws.ravel()), 1)
    whole = np.ones((1, len(classes)))
    point = {name: float(class_miou(classes, c, whole)[0]) for name, c in counts.items()}
    boot = {name: class_miou(classes, c, weights) for name, c in counts.items()}

    def interval(values: np.ndarray) -> list[float]:
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]

    return {
        "rows": {name: {"miou": point[name], "ci95": interval(boot[name])} for name in counts},
        "differences": {
            f"{a} - {b}": {"mean": point[a] - point[b], "ci95": interval(boot[a] - boot[b])} for a, b in pairs
        },
    }


def measure_latency(segmenter: FewShotSegmenter, args: argparse.Namespace) -> dict:
    """Per shot count and rule: the query's segment() time on a bank of that many shots (reduced or not)."""
    (episode,) = held_out(segmenter.manifest.resolution, max(args.shots), 1, args.fold, args.seed + 1, args.pool)
    shots, shot_masks = encode_shots(segmenter, episode)
    grids = segmenter.manifest.diffews.bank_grids
    banks = {}
    for k in args.shots:
        bank = {n: np.concatenate([s[n] for s in shots[:k]]) for n in segmenter.bank_names}
        for rule in args.rules:
            name = row_name(rule, k, args.budget)
            reduced = SupportSelection(rule, args.budget).reduce(bank, shot_masks[:k], grids)
            banks.setdefault(name, segmenter.make_bank(reduced))
    times = {name: [] for name in banks}
    for _ in range(args.latency_rounds):
        for name, bank in banks.items():
            segmenter.segment(episode.query_image, support=bank)  # warm-up: a new bank size
            for _ in range(args.latency_calls):
                start = time.perf_counter()
                segmenter.segment(episode.query_image, support=bank)
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: {**percentiles(values), "bank_shots": banks[name].bank_shots} for name, values in times.items()}


def markdown(result: dict) -> str:
    latency = result["latency"]

    def timing(name: str) -> str:
        t = latency[name]
        return f"{t['p50_ms']:.1f} / {t['p90_ms']:.1f} / {t['max_ms']:.1f} ({t['bank_shots']})"

    measured = "query latency" if result["accuracy"] is None else f"{result['episodes']} paired held-out episodes"
    lines = [
        f"# Support selection: {measured}, budget {result['budget']} shots",
        "",
        f"`{result['command']}`",
        "",
        f"Engines {result['engines']} ({result['backend']}); {result['cpu']}, {result['cores']} cores.",
    ]
    if result["accuracy"] is not None:
        lines += accuracy_lines(result)
    lines += ["", "Query latency (ms; p50 / p90 / max over the calls, the bank's shots in brackets):", ""]
    lines += shots_by_rules(result, timing)
    return "\n".join(lines) + "\n"


def shots_by_rules(result: dict, cell: Callable[[str], str]) -> list[str]:
    """A Markdown table, a row per shot count and a column per rule; `cell(row name)` fills it."""
    rules = result["rules"]
    lines = ["| shots | " + " | ".join(rules) + " |", "| --- | " + " | ".join("---" for _ in rules) + " |"]
    for k in result["shots"]:
        cells = [cell(row_name(rule, k, result["budget"])) for rule in rules]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def accuracy_lines(result: dict) -> list[str]:
    """The mIoU table (shots x rules) and the paired differences."""
    rows = result["accuracy"]["rows"]

    def miou(name: str) -> str:
        low, high = rows[name]["ci95"]
        return f"{rows[name]['miou']:.1f} [{low:.1f}, {high:.1f}]"

    lines = [
        "",
        "mIoU x 100 (HSNet), 95 % bootstrap interval over episodes in brackets; the k-shot row uses the first "
        "k supports of the same episodes.",
        "",
    ]
    lines += shots_by_rules(result, miou)
    lines += ["", "Paired differences (mIoU points; rows named shots:rule, `any` where no rule applies):", ""]
    lines += ["| difference | mean | 95 % interval |", "| --- | --- | --- |"]
    for key, d in result["accuracy"]["differences"].items():
        lines.append(f"| {key} | {d['mean']:+.2f} | [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--engines", type=Path, required=True, help="DiffewS engines taking max(--shots) shots (rule all)"
    )
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--budget", type=int, default=2, help="shots' worth of tokens kept (the model's trained shots)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="episode seed (HSNet: 0)")
    parser.add_argument("--pool", type=int, default=2000, help="held-out scenes the episodes are drawn from")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples for the intervals")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="onnxruntime: the exact path")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=5)
    parser.add_argument(
        "--latency-only", action="store_true", help="skip the accuracy episodes (random-weight engines at SD 2.1 size)"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refuse_to_overwrite([args.out / "support_selection.json", args.out / "support_selection.md"], args.overwrite)
    with reporting_errors():
        segmenter = FewShotSegmenter.from_dir(args.engines, backend=args.backend, threads=args.threads)
        if segmenter.selection.rule != "all" or segmenter.manifest.diffews.max_shots < max(args.shots):
            raise ValueError(
                f"{args.engines} must keep every token (--selection all) and take {max(args.shots)} shots "
                f"(--max-shots): this benchmark applies each rule itself"
            )
        started = time.time()
        classes, counts = ([], {}) if args.latency_only else measure_masks(segmenter, args)
        result = {
            "command": "python -m benchmarks.support_selection " + " ".join(sys.argv[1:]),
            "engines": str(args.engines),
            "backend": segmenter.backend,
            "cpu": cpu_name(),
            "cpu_features": cpu_features(),
            "cores": os.cpu_count(),
            "episodes": args.episodes,
            "shots": args.shots,
            "rules": args.rules,
            "budget": args.budget,
            "accuracy": None
            if args.latency_only
            else summarise(
                classes, counts, comparisons(args.shots, args.rules, args.budget), args.bootstrap, args.seed
            ),
            "latency": measure_latency(segmenter, args),
            "seconds": round(time.time() - started, 1),
        }
        write_report(args.out, "support_selection", result, markdown(result))
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
