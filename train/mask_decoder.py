"""Distil a cheap mask read-out from a DiffewS model's VAE decoder: `--kind mask_head` or `--kind mask_decoder`.

    python -m train.mask_decoder --model modeling/pretrained/synth-diffews --kind mask_head
    python -m train.mask_decoder --model runs/diffews-fold0 --kind mask_decoder --samples 8000 --steps 12000 --overwrite
    python -m train.mask_decoder --model modeling/pretrained/synth-diffews --kind mask_head --evaluate   # figures only

Kinds (`modeling.readouts`): `mask_head` keeps the VAE decoder up to half resolution and learns
only its last stretch; `mask_decoder` replaces the whole decoder with a small network on the
latent: far cheaper, less faithful at the edges. (`head` and `fast`, the names before one
vocabulary, are still accepted.)

Data: the model's own predicted mask latents on episodes of its fold's *training* categories
(what the decoder will see in use), of the synthetic world by default or of a real data set
(`--data coco20i --data-root DIR`, e.g. for a model imported with `train.import_diffews`), plus a
quarter of latents of ground-truth masks, each paired
with the VAE decoder's output. Loss: L1 to the decoded image plus a soft version of the
read-out's threshold decision (boundaries matter more than grey levels). Agreement, the figure that
matters: per-mask IoU between `MaskThreshold` on the learned read-out's output and on the VAE
decoder's, on predictions for episodes of the *held-out* categories. Writes `mask_head/` or
`mask_decoder/` into the model folder (never over an existing one without --overwrite).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from modeling.diffews import DiffewsModel
from modeling.diffews_folder import load_diffews
from modeling.imaging import images_to_tensor, masks_to_tensor
from modeling.readouts import (
    LEARNED_READOUTS,
    MaskDecoder,
    MaskDecoderConfig,
    MaskHead,
    MaskHeadConfig,
    MaskHeadReadout,
    half_resolution_channels,
    half_resolution_features,
    save_readout,
)
from runtime.cli import refuse_to_overwrite
from runtime.sections import OLD_READOUT_NAMES
from segdata.episodes import EpisodeSampler
from segdata.layouts import ClassFolders, Coco20iFolder
from segdata.samples import episode_at_size
from segdata.synthetic import SyntheticFewShot
from segdata.world import SyntheticWorld
from train.distil import add_data_arguments, data_fold, distillation_record, fit

GT_SHARE = 0.25  # of the training pairs: latents of ground-truth masks, for cleaner shapes


def at_resolution(episode, resolution: int):
    """The episode at resolution x resolution (images bilinear, masks nearest); unchanged if it already is."""
    sides = {im.shape[:2] for im in (episode.query_image, *episode.support_images)}
    return episode if sides == {(resolution, resolution)} else episode_at_size(episode, resolution, resolution)


def episode_sources(data: str, root: Path | None, fold: int, resolution: int):
    """(training, held-out) episode sources: `--data synth` (the synthetic world at the model's
    resolution), `coco20i` (the HSNet layout: the fold's training and held-out classes) or `folders`
    (class folders: no held-out split, so the agreement is on the training classes)."""
    if data == "synth":
        world = SyntheticWorld(resolution=resolution, seed=0)
        return SyntheticFewShot(world, fold=fold, split="trn", size=2000), SyntheticFewShot(
            world, fold=fold, split="val", size=1000
        )
    if root is None:
        raise SystemExit(f"error: --data {data} needs --data-root pointing at the data set folder")
    if data == "coco20i":
        return Coco20iFolder(root, fold=fold, split="trn"), Coco20iFolder(root, fold=fold, split="val")
    folders = ClassFolders(root)
    return folders, folders


@torch.no_grad()
def latent_pairs(
    model: DiffewsModel, sampler: EpisodeSampler, count: int, seed: int, gt_share: float = 0.0, batch: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask latents (N, 4, h, w), their VAE-decoded images (N, 3, H, W) float16).

    The latents are the model's predictions for `count` episodes; with `gt_share`, that share of
    the batches holds latents of the queries' ground-truth masks instead.
    """
    latents, decoded = [], []
    episodes = sampler.fixed_episodes(count, seed)
    gt_every = round(1 / gt_share) if gt_share else 0
    with tqdm(total=count, desc="latents", unit="ep") as bar:
        while bar.n < count:
            # Episodes of real data come in many sizes: at the model's resolution they stack into one batch
            # (the model resizes to it anyway, with the same filters).
            chunk = [at_resolution(next(episodes), model.resolution) for _ in range(min(batch, count - bar.n))]
            supports = np.stack([np.stack(e.support_images) for e in chunk])
            masks = np.stack([np.stack(e.support_masks) for e in chunk])
            queries = np.stack([e.query_image for e in chunk])
            bank = model.bank_from_pixels(supports, masks)
            z = model.predict_mask_latents(model.encode(model._resize(images_to_tensor(queries), "bilinear")), bank)
            if gt_every and (bar.n // batch) % gt_every == gt_every - 1:
                truth = np.stack([e.query_mask for e in chunk])
                z = model.encode(model._resize(masks_to_tensor(truth), "nearest"))
            latents.append(z)
            decoded.append(model.vae.decode(z / model.vae.config.scaling_factor).sample.clamp(-1, 1).half())
            bar.update(len(chunk))
    return torch.cat(latents), torch.cat(decoded)


@torch.no_grad()
def cached_features(vae, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(N, 4, h, w) latents -> (N, C, 4h, 4w) float16 `half_resolution_features`, computed once:
    the head's training then runs only the head."""
    return torch.cat([half_resolution_features(vae, z).half() for z in latents.split(batch)])


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-mask IoU of two (N, H, W) bool batches (1 where both are empty)."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def boundary_band(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> the pixels whose 3x3 neighbourhood holds both labels: the one-pixel band around edges."""
    x = masks.float()[:, None]
    grown = torch.nn.functional.max_pool2d(x, 3, 1, 1)
    shrunk = -torch.nn.functional.max_pool2d(-x, 3, 1, 1)
    return (grown != shrunk)[:, 0]


@torch.no_grad()
def agreement(model: DiffewsModel, decoder: nn.Module, latents: torch.Tensor, decoded: torch.Tensor) -> dict:
    """Mask IoU between a learned read-out (`decoder`: latents -> images) and the VAE decoder's, per mask
    and accumulated, and where they differ.

    `iou_with_vae_maximum` thresholds the fast image at the VAE image's own relative cut: if it is
    no better than `mean_iou`, the errors are in the edges, not in the image-wide maximum.
    """
    fast_images = torch.cat([decoder(z) for z in latents.split(64)])
    fast, full = model.threshold(fast_images), model.threshold(decoded.float())
    ious = mask_iou(fast, full)
    flipped = fast ^ full
    figures = {
        "masks": len(ious),
        "mean_iou": round(float(ious.mean()), 4),
        "min_iou": round(float(ious.min()), 4),
        "fraction_at_least_0.98": round(float((ious >= 0.98).float().mean()), 4),
        "pooled_iou": round(float((fast & full).sum() / (fast | full).sum().clamp(min=1)), 4),
        "flipped_pixels_per_mask": round(float(flipped.flatten(1).sum(1).float().mean()), 1),
        "flipped_on_boundary_band": round(float((flipped & boundary_band(full)).sum() / flipped.sum().clamp(min=1)), 4),
    }
    if model.threshold.relative is not None:
        vae = (decoded.float().clamp(-1, 1) + 1) / 2
        cut = model.threshold.relative * vae.flatten(1).max(dim=1).values[:, None, None]
        with_vae_cut = ((fast_images.clamp(-1, 1) + 1) / 2).mean(dim=1) > cut
        figures["iou_with_vae_maximum"] = round(float(mask_iou(with_vae_cut, full).mean()), 4)
    return figures


def threshold_loss(pred: torch.Tensor, target: torch.Tensor, readout, softness: float = 0.02) -> torch.Tensor:
    """BCE of the read-out's decision: is the predicted channel mean above the predicted threshold, as
    the VAE decoder's image says? L1 alone leaves blurry boundaries that flip around the threshold."""
    x, y = (pred + 1) / 2, (target + 1) / 2

    def cut(img):
        if readout.relative is not None:
            return readout.relative * img.flatten(1).max(dim=1).values[:, None, None]
        return torch.full_like(img[:, 0, :1, :1], readout.absolute)

    want = (y.mean(dim=1) > cut(y)).float()
    return torch.nn.functional.binary_cross_entropy_with_logits((x.mean(dim=1) - cut(x)) / softness, want)


def train(
    decoder: nn.Module,
    inputs: torch.Tensor,
    decoded: torch.Tensor,
    readout,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    threshold_weight: float = 0.1,
):
    """AdamW with a one-cycle schedule on L1 + `threshold_weight` x `threshold_loss`.

    `inputs` are what `decoder` takes: latents for a `MaskDecoder`, cached features for a `MaskHead`.
    """

    def batch_loss() -> torch.Tensor:
        index = torch.randint(len(inputs), (batch,))
        pred, target = decoder(inputs[index].float()), decoded[index].float()
        return (pred - target).abs().mean() + threshold_weight * threshold_loss(pred, target, readout)

    return fit(decoder, batch_loss, steps, lr, seed, "mask decoder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="DiffewS model folder (the read-out is saved in it)")
    parser.add_argument(
        "--kind",
        choices=(*LEARNED_READOUTS, *OLD_READOUT_NAMES),
        default="mask_head",
        help="the read-out to train, saved in the model folder's sub-folder of that name (default: mask_head)",
    )
    add_data_arguments(parser, "episodes the predictions are made on")
    parser.add_argument("--samples", type=int, default=4000, help="training latents")
    parser.add_argument("--val", type=int, default=500, help="held-out predictions for the agreement figure")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-width", type=int, default=MaskHeadConfig.width, help="--kind mask_head: its channels")
    parser.add_argument(
        "--latent-channels", type=int, default=MaskDecoderConfig.latent_channels, help="--kind mask_decoder"
    )
    parser.add_argument(
        "--up-channels", type=int, nargs=3, default=list(MaskDecoderConfig.up_channels), help="--kind mask_decoder"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing mask_head/ or mask_decoder/")
    parser.add_argument(
        "--evaluate", action="store_true", help="train nothing: the agreement figures of the model's existing read-out"
    )
    args = parser.parse_args(argv)
    if args.kind in OLD_READOUT_NAMES:
        print(f"note: --kind {args.kind} is now called --kind {OLD_READOUT_NAMES[args.kind]}", file=sys.stderr)
        args.kind = OLD_READOUT_NAMES[args.kind]
    out = args.model / args.kind  # the folder of that name in the model folder
    refuse_to_overwrite([out], args.overwrite or args.evaluate)  # --evaluate writes nothing
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    model = load_diffews(args.model)
    trn, val = episode_sources(args.data, args.data_root, data_fold(args), model.resolution)
    if args.evaluate:
        existing = getattr(model, args.kind)
        if existing is None:
            raise SystemExit(f"error: {args.model} has no {out.name}/ to evaluate; train one first")
        val_latents, val_decoded = latent_pairs(model, EpisodeSampler(val, 1), args.val, args.seed + 2)
        print(json.dumps(agreement(model, existing, val_latents, val_decoded), indent=1))
        return 0
    train_latents, train_decoded = latent_pairs(model, EpisodeSampler(trn, 1), args.samples, args.seed + 1, GT_SHARE)
    val_latents, val_decoded = latent_pairs(model, EpisodeSampler(val, 1), args.val, args.seed + 2)
    if args.kind == "mask_head":
        network = MaskHead(MaskHeadConfig(half_resolution_channels(model.vae), width=args.head_width))
        inputs = cached_features(model.vae, train_latents)
    else:
        config = MaskDecoderConfig(latent_channels=args.latent_channels, up_channels=tuple(args.up_channels))
        network, inputs = MaskDecoder(config), train_latents
    data_s = time.time() - start
    network, final_loss = train(
        network, inputs, train_decoded, model.threshold, args.steps, args.batch, args.lr, args.seed
    )
    readout = MaskHeadReadout(model.vae, network) if args.kind == "mask_head" else network
    figures = agreement(model, readout, val_latents, val_decoded)
    info = distillation_record(
        "train.mask_decoder", argv, args, {"samples": args.samples}, final_loss, figures, data_s, start
    )
    save_readout(network, out, info)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
