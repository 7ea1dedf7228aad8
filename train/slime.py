"""Optimises SLiMe part embeddings from one to ten annotated images.

    python -m train.slime --base synth --images car.png --masks car_parts.npy \\
        --classes background,body,window,wheel --out car.safetensors
    python -m train.slime --base sd21-base --base-path /models/sd-2-1-base --images a.png b.png ... \\
        --masks a.png b.png ... --classes background,head,neck+torso,leg,tail --min-crop-ratio 0.8 \\
        --val-images v.png --val-masks v.png --out horse.safetensors

Recipe (METHOD_SPEC 2.4-2.5, the released code's): Adam, lr 0.1, on rows 1..K-1 of the text
context of "part" x K only; 200 epochs of batch 1 (200 steps for one image, 2000 for ten); t ~
U{5..100} with fresh noise each step; loss = weighted CE + 1.0 x WAS-MSE + 0.005 x SD loss (CFG
scale 100); augmentations `train.slime_data`. After every epoch the embeddings segment the
validation images (the training images themselves when none are given, as the 1-sample setting
does) and are kept when their mean part IoU is at least the best so far.

Masks are (H, W) integer part labels, 0 = background, as PNG (palette or grey) or .npy. The
output is one safetensors file (`modeling.slime_embedding`); an existing file is only replaced
with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from modeling.imaging import images_to_tensor
from modeling.presets import build_model
from modeling.slime import TRAIN_TIMESTEPS, SlimeModel, SlimeSettings, default_token_threshold
from modeling.slime_embedding import SlimeEmbedding, weights_hash
from runtime.cli import refuse_to_overwrite
from runtime.patches import Patching, segment_parts
from segdata.layouts import LayoutError, read_labels, read_rgb
from segdata.metrics import average, mean_part_ious
from train.slime_data import PartAugmenter

Example = tuple[np.ndarray, np.ndarray]  # (H, W, 3) uint8 image, (H, W) int labels


@dataclass
class SlimeRecipe:
    epochs: int = 200
    lr: float = 0.1
    min_crop_ratio: float = 0.8
    max_rotation: float = 30.0
    seed: int = 0


def parse_class_names(text: str) -> list[str]:
    """ "background,head,body" -> the names; ValueError for fewer than two, an empty or a repeated one."""
    names = [name.strip() for name in text.split(",")]
    if any(not name for name in names):
        raise ValueError(f"{text!r} has an empty class name; separate the names by single commas")
    return check_class_names(names)


def check_class_names(names: list[str]) -> list[str]:
    """`names` if there are at least two (background first), none empty or repeated; else ValueError."""
    if any(not name.strip() for name in names):
        raise ValueError(f"{names} has an empty class name")
    if len(names) < 2:
        raise ValueError("name the background and at least one part, e.g. background,head,body")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} named more than once")
    return names


def class_list(text: str) -> list[str]:
    """`--classes` for argparse: `parse_class_names`, its error reported as a usage error."""
    try:
        return parse_class_names(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_examples(examples: list[Example], num_classes: int, what: str) -> None:
    """Raises ValueError when an image and its labels differ in size or the labels exceed the classes."""
    if not examples:
        raise ValueError(f"no {what} images")
    for i, (image, labels) in enumerate(examples):
        if image.shape[:2] != labels.shape:
            raise ValueError(
                f"{what} {i}: the mask is {labels.shape[1]}x{labels.shape[0]} but the image is "
                f"{image.shape[1]}x{image.shape[0]}; pass a label map of the image's size"
            )
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{what} {i}: labels span {labels.min()}..{labels.max()} but there are {num_classes} classes "
                "(0 = background); pass one name per label with --classes"
            )
        if not (labels > 0).any():
            raise ValueError(f"{what} {i}: the mask marks no part (all background)")


def segment_examples(model: SlimeModel, images: list[np.ndarray], patching: Patching) -> list[np.ndarray]:
    """Label maps of `images` with the model's current embeddings (PyTorch, patched inference)."""
    return [segment_parts(im, lambda crop: model.segment_crops(crop[None])[0], patching) for im in images]


def validation_iou(model: SlimeModel, examples: list[Example], patching: Patching) -> float:
    predictions = segment_examples(model, [im for im, _ in examples], patching)
    return average(mean_part_ious(zip(predictions, [lab for _, lab in examples]), model.num_classes))


def optimise(
    model: SlimeModel,
    train: list[Example],
    val: list[Example],
    recipe: SlimeRecipe,
    patching: Patching,
    progress: bool = True,
) -> dict:
    """Optimises `model.learned` in place and leaves the best-by-validation value in it.

    Returns:
        a record: steps, best epoch and its validation IoU, per-epoch losses and IoUs, time.
    """
    check_examples(train, model.num_classes, "training")
    check_examples(val, model.num_classes, "validation")
    rng = np.random.default_rng(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    augment = PartAugmenter(
        model.resolution, model.latent_side, model.num_classes, recipe.min_crop_ratio, recipe.max_rotation
    )
    optimizer = torch.optim.Adam([model.learned], lr=recipe.lr)
    best_iou, best_epoch, best = -1.0, -1, model.learned.detach().clone()
    history, start = [], time.time()
    bar = tqdm(range(recipe.epochs), desc="slime", unit="epoch", disable=not progress)
    for epoch in bar:
        losses = []
        for index in rng.permutation(len(train)):
            image, labels = augment(*train[index], rng)
            x = images_to_tensor(image[None])  # the augmenter's crop is already at the model resolution
            t = int(rng.integers(TRAIN_TIMESTEPS[0], TRAIN_TIMESTEPS[1] + 1))
            loss = model.training_losses(x, torch.from_numpy(labels)[None], t, generator)
            optimizer.zero_grad(set_to_none=True)
            loss["total"].backward()
            optimizer.step()
            losses.append({k: float(v.detach()) for k, v in loss.items()})
        iou = validation_iou(model, val, patching)
        if iou >= best_iou:  # ">=": the released code keeps the latest of equally good epochs
            best_iou, best_epoch, best = iou, epoch, model.learned.detach().clone()
        mean_loss = {k: float(np.mean([x[k] for x in losses])) for k in losses[0]}
        history.append({"epoch": epoch, **{k: round(v, 5) for k, v in mean_loss.items()}, "val_iou": round(iou, 4)})
        bar.set_postfix(loss=f"{mean_loss['total']:.3f}", val=f"{iou:.3f}", best=f"{best_iou:.3f}")
    with torch.no_grad():
        model.learned.copy_(best)
    return {
        "steps": recipe.epochs * len(train),
        "best_epoch": best_epoch,
        "best_val_iou": round(best_iou, 4),
        "wall_time_s": round(time.time() - start, 1),
        "history": history,
    }


def load_examples(images: list[Path], masks: list[Path], what: str) -> list[Example]:
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} {what} images but {len(masks)} masks; pass one mask per image")
    try:
        return [(read_rgb(i), read_labels(m).astype(np.int64)) for i, m in zip(images, masks)]
    except LayoutError as err:
        raise ValueError(str(err)) from err


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="synth", help="base model: a preset (synth, sd21-base, ...) or a folder")
    parser.add_argument("--base-path", default=None, help="local weights folder of presets that need one")
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="1 to 10 training images")
    parser.add_argument("--masks", type=Path, nargs="+", required=True, help="their part labels (PNG or .npy)")
    parser.add_argument(
        "--classes", type=class_list, required=True, help="comma-separated class names, background first"
    )
    parser.add_argument("--out", type=Path, required=True, help="the embedding file to write (.safetensors)")
    parser.add_argument("--val-images", type=Path, nargs="*", default=[], help="validation images (default: train)")
    parser.add_argument("--val-masks", type=Path, nargs="*", default=[], help="their part labels")
    parser.add_argument("--epochs", type=int, default=200, help="epochs of batch 1 (the released code's 200)")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam learning rate (paper Table 9: 0.1 best)")
    parser.add_argument(
        "--min-crop-ratio", type=float, default=0.8, help="smallest random crop, fraction of the side (cars: 0.6)"
    )
    parser.add_argument("--max-rotation", type=float, default=30.0, help="rotation range, degrees (faces: 10)")
    parser.add_argument("--patches-per-side", type=int, default=1, help="validation inference: n x n crops")
    parser.add_argument("--patch-size", type=int, default=None, help="validation crop side (default: whole image)")
    parser.add_argument(
        "--token-threshold",
        type=float,
        default=None,
        help="test time: a class counts where its cross-attention map reaches this (default: the base's; SD 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--bgr", action="store_true", help="the released code's quirk: feed SD BGR images")
    parser.add_argument(
        "--suppress-first-kept",
        action="store_true",
        help="the released code's quirk: suppress the first kept class's map instead of the background's",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    args.class_names = args.classes
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    refuse_to_overwrite([args.out], args.overwrite)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train = load_examples(args.images, args.masks, "training")
        val = load_examples(args.val_images, args.val_masks, "validation") if args.val_images else train
        components = build_model(args.base, path=args.base_path, seed=args.seed)
        threshold = default_token_threshold(components.preset) if args.token_threshold is None else args.token_threshold
        settings = SlimeSettings(threshold, bgr=args.bgr, suppress_first_kept=args.suppress_first_kept)
        model = SlimeModel.from_base(components, args.class_names, settings)
        patching = Patching(model.resolution, args.patches_per_side, args.patch_size)
        patching.check()
        recipe = SlimeRecipe(args.epochs, args.lr, args.min_crop_ratio, args.max_rotation, args.seed)
        record = optimise(model, train, val, recipe, patching)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    info = {
        "command": "python -m train.slime " + " ".join(sys.argv[1:] if argv is None else argv),
        "images": [str(p) for p in args.images],
        "recipe": asdict(recipe),
        **record,
    }
    embedding = SlimeEmbedding.from_model(
        model, args.class_names, components.preset, weights_hash(components.unet, components.vae), info
    )
    embedding.save(args.out, overwrite=args.overwrite)
    summary = {k: info[k] for k in ("steps", "best_epoch", "best_val_iou", "wall_time_s")}
    print(json.dumps({"out": str(args.out), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
