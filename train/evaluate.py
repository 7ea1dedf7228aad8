"""Few-shot segmentation evaluation with the HSNet protocol, next to trivial baselines.

    python -m train.evaluate --model modeling/pretrained/synth-diffews --fold 0 --shots 1 5
    python -m train.evaluate --model DIR --data coco20i --data-root /data/COCO2014 --fold 0

Protocol (HSNet / DiffewS): 1000 episodes per fold drawn from a fixed seed (0) among the fold's
held-out classes; per class, foreground and background intersection and union are summed over
its episodes; mIoU = mean over classes of the foreground IoU; FB-IoU = mean over {background,
foreground} of (sum over classes of intersection) / (sum of union). Images are resized to the
model resolution and ground truth with nearest interpolation, and the comparison is made there,
as the authors do. Baselines, on the same episodes: "all foreground" and "paste support" (the
support mask as the prediction; with k shots, the pixel-wise majority of the k masks).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.files import write_text
from segdata.episodes import Episode, EpisodeSampler, FewShotSource
from segdata.samples import episode_at_size
from segdata.synthetic import SyntheticFewShot
from segdata.world import SyntheticWorld

Predictor = Callable[[list[Episode]], np.ndarray]  # B episodes -> (B, R, R) bool


class IouMeter:
    """HSNet's accumulation: per class, foreground / background intersection and union."""

    def __init__(self):
        self.sums: dict[int, np.ndarray] = {}  # class -> [[inter_bg, inter_fg], [union_bg, union_fg]]

    def update(self, category: int, pred: np.ndarray, gt: np.ndarray) -> None:
        pred, gt = pred.astype(bool), gt.astype(bool)
        acc = self.sums.setdefault(category, np.zeros((2, 2), np.int64))
        acc[0] += [(~pred & ~gt).sum(), (pred & gt).sum()]
        acc[1] += [(~pred | ~gt).sum(), (pred | gt).sum()]

    def class_iou(self) -> dict[int, float]:
        """Foreground IoU x 100 per class."""
        return {c: 100.0 * s[0, 1] / max(s[1, 1], 1) for c, s in sorted(self.sums.items())}

    def miou(self) -> float:
        return float(np.mean(list(self.class_iou().values())))

    def fb_iou(self) -> float:
        total = sum(self.sums.values())
        return float(np.mean(100.0 * total[0] / np.maximum(total[1], 1)))


def all_foreground(episodes: list[Episode]) -> np.ndarray:
    return np.ones((len(episodes), *episodes[0].query_mask.shape), bool)


def paste_support(episodes: list[Episode]) -> np.ndarray:
    return np.stack([np.mean(ep.support_masks, axis=0) >= 0.5 for ep in episodes])


def model_predictor(model) -> Predictor:
    """Wraps a `DiffewsModel`: one support stream and one query stream per batch of episodes."""

    def predict(episodes: list[Episode]) -> np.ndarray:
        supports = np.stack([np.stack(ep.support_images) for ep in episodes])  # [B, S, R, R, 3]
        masks = np.stack([np.stack(ep.support_masks) for ep in episodes])  # [B, S, R, R]
        bank = model.bank_from_pixels(supports, masks)
        return model.segment(np.stack([ep.query_image for ep in episodes]), bank)

    return predict


def evaluate(
    predictors: dict[str, Predictor], episodes: Iterable[Episode], resolution: int, batch: int = 8, total=None
) -> dict[str, IouMeter]:
    """Runs every predictor on the same episodes; returns one meter per predictor."""
    meters = {name: IouMeter() for name in predictors}
    pending: list[Episode] = []

    def flush():
        for name, predict in predictors.items():
            for ep, pred in zip(pending, predict(pending)):
                meters[name].update(ep.category, pred, ep.query_mask)
        pending.clear()

    for episode in tqdm(episodes, total=total, desc="episodes", unit="ep"):
        pending.append(episode_at_size(episode, resolution, resolution))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return meters


def fewshot_table(rows: list[dict]) -> str:
    """Markdown table of evaluation rows."""
    lines = ["| method | shots | mIoU | FB-IoU |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['method']} | {r['shots']} | {r['miou']:.1f} | {r['fb_iou']:.1f} |" for r in rows]
    return "\n".join(lines)


def run_evaluation(
    model, source: FewShotSource, shots_list: list[int], episodes: int, seed: int = 0, batch: int = 8
) -> list[dict]:
    """The table rows: DiffewS and the two baselines for each shot count."""
    rows = []
    for shots in shots_list:
        sampler = EpisodeSampler(source, shots)
        predictors = {
            "DiffewS": model_predictor(model),
            "all foreground": all_foreground,
            "paste support": paste_support,
        }
        start = time.time()
        meters = evaluate(predictors, sampler.fixed_episodes(episodes, seed), model.resolution, batch, total=episodes)
        seconds = round(time.time() - start, 1)
        for name, meter in meters.items():
            rows.append(
                {
                    "method": name,
                    "shots": shots,
                    "miou": round(meter.miou(), 2),
                    "fb_iou": round(meter.fb_iou(), 2),
                    "class_iou": {str(c): round(v, 2) for c, v in meter.class_iou().items()},
                    "episodes": episodes,
                    **({"seconds": seconds} if name == "DiffewS" else {}),
                }
            )
    return rows


DATA_NOTES = {
    "synth": "the fold's 18 training categories; held-out categories never appear",
    "synth-variants": "every colour x pattern variant of the fold's 6 training shape families, 192 classes; "
    "the held-out families never appear",
}


def evaluation_section(rows: list[dict], command: str, fold: int) -> str:
    """The model card's evaluation table, with the command that measured it."""
    return f"""## Evaluation (held-out categories of fold {fold})

Command: `{command}`

{fewshot_table(rows)}

HSNet protocol: {rows[0]["episodes"] if rows else "?"} episodes per shot setting from seed 0;
per-class foreground IoU summed over episodes, mIoU = mean over classes; FB-IoU = mean of the
background and foreground IoU summed over classes. Baselines on the same episodes.
"""


def model_card(config: dict, rows: list[dict], command: str, fold: int) -> str:
    """README.md of a DiffewS model folder: what it is, how it was trained (or where it was imported
    from), its evaluation table on `fold`."""
    if "imported" in config:  # python -m train.import_diffews: the authors trained it, keep its card
        from train.import_diffews import model_card as imported_card

        return imported_card(config) + "\n" + evaluation_section(rows, command, fold)
    training = config.get("training", {})
    data = config.get("data", {})
    minutes = training.get("wall_time_s", 0) / 60
    note = f" ({training['wall_time_note']})" if training.get("wall_time_note") else ""
    keys = ("steps", "lr", "weight_decay", "episodes", "grad_accum", "world_size", "global_batch", "max_shots", "clip",
            "seed", "mixed_precision")  # fmt: skip
    recipe = ", ".join(f"{k} {training[k]}" for k in keys if k in training)
    return f"""# DiffewS model fine-tuned from `{config.get("base")}`

One-step few-shot segmentation (DiffewS, OI2M): support image + mask and query image in, query mask
out, through one KV-fusion UNet pass per stream at t = 1 and a VAE decode. Resolution
{config["resolution"]} px; empty-prompt embedding of {config["empty_prompt_tokens"]} tokens stored
with the weights; read-out {config["readout"]}.

```python
from modeling.diffews_folder import load_diffews

model = load_diffews("<this folder>")
bank = model.bank_from_pixels(support_images, support_masks)  # (B, S, H, W, 3) uint8, (B, S, H, W)
masks = model.segment(query_images, bank)  # (B, H, W, 3) uint8 -> (B, H, W) bool
```

## Training

Command: `{training.get("command", "?")}`

Data: {data.get("source")} fold {data.get("fold")} ({DATA_NOTES.get(data.get("source"), "training classes only")}). Recipe: {recipe}.
Wall time {minutes:.1f} min on {training.get("world_size", 1)} process(es), {training.get("device", "?")}, with {training.get("torch_threads", "?")} threads{note};
mean loss of the last 50 steps {training.get("final_loss_mean_last_50")}.

{evaluation_section(rows, command, fold)}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="DiffewS model folder")
    parser.add_argument("--data", choices=("synth", "coco20i", "folders"), default="synth")
    parser.add_argument("--data-root", type=Path, default=None, help="data set folder for coco20i / folders")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--episodes", type=int, default=1000, help="episodes per shot setting (HSNet: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (HSNet: 0)")
    parser.add_argument("--pool-size", type=int, default=2000, help="synth: scenes in the evaluation pool")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument(
        "--split",
        choices=("val", "trn"),
        default="val",
        help="synth: held-out categories (val, the protocol) or the fold's training categories on unseen scenes (trn)",
    )
    parser.add_argument("--batch", type=int, default=8, help="episodes per forward pass")
    parser.add_argument("--attention", choices=("sdpa", "matmul"), default="sdpa")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--card", action="store_true", help="write README.md and evaluation.json into the model folder")
    args = parser.parse_args(argv)
    if args.card and args.split != "val":
        parser.error("--card records the held-out evaluation; drop --split trn")

    import torch

    from modeling.diffews_folder import load_diffews
    from segdata.layouts import ClassFolders, Coco20iFolder

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_diffews(args.model, attention=args.attention)
    if args.data == "synth":
        world = SyntheticWorld(resolution=model.resolution, seed=args.world_seed)
        source = SyntheticFewShot(world, fold=args.fold, split=args.split, size=args.pool_size)
    elif args.data_root is None:
        parser.error(f"--data {args.data} needs --data-root")
    elif args.data == "coco20i":
        source = Coco20iFolder(args.data_root, fold=args.fold, split="val")
    else:
        source = ClassFolders(args.data_root)
    rows = run_evaluation(model, source, args.shots, args.episodes, args.seed, args.batch)
    print(fewshot_table(rows))
    result = {"fold": args.fold, "data": args.data, "split": args.split, "rows": rows}
    if args.json:
        write_text(args.json, json.dumps(result, indent=1))
    if args.card:
        from modeling.diffews_folder import read_config

        command = "python -m train.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
        write_text(args.model / "evaluation.json", json.dumps(result, indent=1))
        write_text(args.model / "README.md", model_card(read_config(args.model), rows, command, args.fold))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
