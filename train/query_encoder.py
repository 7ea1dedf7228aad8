"""Distil a cheap query encoder from a DiffewS model's VAE encoder, the way TAESD was distilled.

    python -m train.query_encoder --model modeling/pretrained/synth-diffews
    python -m train.query_encoder --model runs/diffews-fold0 --data coco20i --data-root DIR --overwrite
    python -m train.query_encoder --model modeling/pretrained/synth-diffews --evaluate   # figures only

The network (`modeling.query_encoders.DistilledEncoder`) learns to give the VAE encoder's scaled
posterior mean of an image, which is what the UNet reads for the query. Data: the images (queries
and supports) of episodes of the fold's *training* categories at the model's resolution, each also
mirrored, with the VAE's latents computed once. Loss: L1 + L2 on the latent (TAESD's encoder
objective). The figure that matters is the mask: on episodes of the *held-out* categories, the
per-mask IoU between the model's masks with the distilled encoder and with the VAE's (the same
banks, the same read-out), and each one's mIoU against the ground truth. Writes `query_encoder/`
into the model folder (never over an existing one without --overwrite).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from modeling.diffews import DiffewsModel
from modeling.diffews_folder import load_diffews
from modeling.imaging import images_to_tensor
from modeling.query_encoders import FOLDER, DistilledEncoder, DistilledEncoderConfig, save_query_encoder
from runtime.cli import refuse_to_overwrite
from segdata.episodes import EpisodeSampler
from segdata.metrics import mask_iou
from train.distil import add_data_arguments, data_fold, distillation_record, fit
from train.evaluate import IouMeter
from train.mask_decoder import at_resolution, episode_sources


@torch.no_grad()
def latent_pairs(model: DiffewsModel, sampler: EpisodeSampler, episodes: int, seed: int, batch: int = 32):
    """(images (N, 3, R, R) float16 in [-1, 1], their VAE latents (N, 4, R/8, R/8)): every image of
    `episodes` episodes at the model's resolution, and its mirror image."""
    images = []
    stream = sampler.fixed_episodes(episodes, seed)
    for _ in range(episodes):
        episode = at_resolution(next(stream), model.resolution)
        images += [episode.query_image, *episode.support_images]
    x = images_to_tensor(np.stack(images))
    x = torch.cat([x, x.flip(-1)])
    latents = torch.cat([model.encode(chunk) for chunk in tqdm(x.split(batch), desc="VAE latents", unit="batch")])
    return x.half(), latents


def train(
    encoder: DistilledEncoder, images: torch.Tensor, latents: torch.Tensor, steps: int, batch: int, lr: float, seed: int
):
    """AdamW with a one-cycle schedule on L1 + L2 between the encoder's latents and the VAE's."""

    def batch_loss() -> torch.Tensor:
        index = torch.randint(len(images), (batch,))
        error = encoder(images[index].float()) - latents[index]
        return error.abs().mean() + error.square().mean()

    return fit(encoder, batch_loss, steps, lr, seed, "query encoder")


@torch.no_grad()
def agreement(model: DiffewsModel, sampler: EpisodeSampler, episodes: int, seed: int) -> dict:
    """Masks with the distilled encoder against masks with the VAE encoder, on `episodes` episodes
    (the VAE read-out, banks from the VAE as always), and each side's mIoU against the ground truth."""
    ious, latent_errors = [], []
    truth = {"vae": IouMeter(), "distilled": IouMeter()}
    stream = sampler.fixed_episodes(episodes, seed)
    for _ in tqdm(range(episodes), desc="agreement", unit="ep"):
        episode = next(stream)
        bank = model.bank_from_pixels(np.stack(episode.support_images)[None], np.stack(episode.support_masks)[None])
        masks = {}
        for encoder in truth:
            masks[encoder] = model.segment(episode.query_image[None], bank, query_encoder=encoder)[0]
            truth[encoder].update(episode.category, masks[encoder], episode.query_mask > 0)
        ious.append(mask_iou(masks["vae"], masks["distilled"]))
        x = model._resize(images_to_tensor(episode.query_image[None]), "bilinear")
        want = model.encode(x)
        latent_errors.append(float((model.query_encoder(x) - want).norm() / want.norm()))
    ious = np.array(ious)
    return {
        "episodes": episodes,
        "mean_iou": round(float(ious.mean()), 4),
        "min_iou": round(float(ious.min()), 4),
        "fraction_at_least_0.98": round(float((ious >= 0.98).mean()), 4),
        "latent_relative_l2": round(float(np.mean(latent_errors)), 4),
        "miou_vae": round(truth["vae"].miou(), 2),
        "miou_distilled": round(truth["distilled"].miou(), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="DiffewS model folder (the encoder is saved in it)")
    add_data_arguments(parser, "images to distil on")
    parser.add_argument("--episodes", type=int, default=1500, help="training episodes (their queries and supports)")
    parser.add_argument("--val", type=int, default=300, help="held-out episodes for the agreement figures")
    parser.add_argument("--shots", type=int, default=1, help="shots per episode (more images per episode)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--width", type=int, default=None, help="channels at every level (default: half the VAE's first)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing query_encoder/")
    parser.add_argument("--evaluate", action="store_true", help="train nothing: the figures of the model's encoder")
    args = parser.parse_args(argv)
    out = args.model / FOLDER
    refuse_to_overwrite([out], args.overwrite or args.evaluate)  # --evaluate writes nothing
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    model = load_diffews(args.model)
    trn, val = episode_sources(args.data, args.data_root, data_fold(args), model.resolution)
    if args.evaluate:
        if model.query_encoder is None:
            raise SystemExit(f"error: {args.model} has no {FOLDER}/ to evaluate; train one first")
        print(json.dumps(agreement(model, EpisodeSampler(val, args.shots), args.val, args.seed + 2), indent=1))
        return 0
    images, latents = latent_pairs(model, EpisodeSampler(trn, args.shots), args.episodes, args.seed + 1)
    config = DistilledEncoderConfig.for_vae(model.vae)
    if args.width:
        config = DistilledEncoderConfig(config.latent_channels, args.width, config.blocks)
    data_s = time.time() - start
    encoder, final_loss = train(DistilledEncoder(config), images, latents, args.steps, args.batch, args.lr, args.seed)
    model.query_encoder = encoder
    figures = agreement(model, EpisodeSampler(val, args.shots), args.val, args.seed + 2)
    info = distillation_record(
        "train.query_encoder", argv, args, {"images": len(images)}, final_loss, figures, data_s, start
    )
    save_query_encoder(encoder, out, info)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
