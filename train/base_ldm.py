"""Stage 2 of the synth base: a text-conditioned latent diffusion model on the world's captions.

The small CLIP text encoder and the UNet are trained together on the denoising loss (as the
original LDM trained its text transformer), epsilon prediction on SD's noise schedule, with
10 % of captions dropped to the empty prompt so classifier-free guidance works.
Training latents come from a fixed pool of scenes encoded once by the frozen VAE; each step
samples the stored posterior, so the UNet sees the VAE's noise as SD's did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel

from modeling import configs
from modeling.imaging import images_to_tensor
from modeling.tokenizer import MAX_LENGTH
from runtime.files import replacing_folder
from segdata.categories import NUM_CATEGORIES
from segdata.world import SyntheticWorld
from train.checkpoint import resume, save_checkpoint
from train.loop import LossLog, cosine_lr, seed_step, set_lr

LDM_SPLIT = 11  # scene keys (LDM_SPLIT, 0, i) of the latent pool


@dataclass
class LdmRecipe:
    steps: int = 2800
    batch_size: int = 16
    pool_size: int = 4000
    # Large single objects teach each name's look fastest: at 800 steps, 0.8 (with lr 1e-3) gave
    # samples of the prompt's colour 3x as often as chance; 0.5 (lr 6e-4) 1.5 to 2x.
    single_object_fraction: float = 0.8
    lr: float = 1e-3
    warmup: int = 50
    caption_dropout: float = 0.1
    # Min-SNR-gamma loss weighting (Hang et al. 2023, who report about 3x faster convergence):
    # caps the weight of the easy low-noise steps; 0 gives the plain epsilon MSE. (At 800 steps
    # here it made no visible difference either way.)
    min_snr_gamma: float = 5.0
    checkpoint_every: int = 200


def pool_scene(world: SyntheticWorld, i: int, single_object_fraction: float):
    """Scene i of the latent pool: a single large object (cycling through the categories) or a full scene."""
    if (i % 100) < single_object_fraction * 100:
        return world.part_scene((LDM_SPLIT, 1, i), i % NUM_CATEGORIES)
    return world.scene((LDM_SPLIT, 0, i))


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL, world: SyntheticWorld, size: int, single_object_fraction: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Posterior (mean, std) of `size` pool scenes, each (N, 4, h, w) unscaled, and their captions."""
    means, stds, captions = [], [], []
    for start in tqdm(range(0, size, 64), desc="encoding the latent pool", unit="batch"):
        scenes = [pool_scene(world, i, single_object_fraction) for i in range(start, min(size, start + 64))]
        dist = vae.encode(images_to_tensor(np.stack([s.image for s in scenes]))).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
        captions += [s.caption for s in scenes]
    return torch.cat(means), torch.cat(stds), captions


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """(B, 77) int64 token ids, padded with 0."""
    return tokenizer(
        prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


def denoising_loss(
    pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, scheduler: DDPMScheduler, min_snr_gamma: float
) -> torch.Tensor:
    """Epsilon MSE, each sample weighted by min(SNR_t, gamma) / SNR_t when gamma > 0."""
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))  # [B]
    if min_snr_gamma <= 0:
        return per_sample.mean()
    snr = compute_snr(scheduler, t)
    return (per_sample * snr.clamp(max=min_snr_gamma) / snr).mean()


def new_text_encoder(tokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **configs.SYNTH_TEXT_ENCODER))


def train_ldm(
    vae: AutoencoderKL, tokenizer, world: SyntheticWorld, run_dir: Path, recipe: LdmRecipe, seed: int
) -> tuple[CLIPTextModel, UNet2DConditionModel]:
    """Trains (or resumes) the text encoder and UNet; saved to run_dir/{text_encoder,unet}."""
    if (run_dir / "unet" / "config.json").exists():
        return (
            CLIPTextModel.from_pretrained(run_dir / "text_encoder", local_files_only=True),
            UNet2DConditionModel.from_pretrained(run_dir / "unet", local_files_only=True),
        )
    torch.manual_seed(seed)
    text_encoder, unet = new_text_encoder(tokenizer), UNet2DConditionModel(**configs.SYNTH_UNET)
    modules = {"text_encoder": text_encoder, "unet": unet}
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.01)
    scheduler = DDPMScheduler.from_config(configs.SD_SCHEDULER)
    ckpt, log = run_dir / "checkpoints" / "ldm", LossLog(run_dir / "logs" / "ldm.jsonl")
    start, _ = resume(ckpt, modules, optimizer, log, "the text encoder and UNet")

    vae.eval().requires_grad_(False)
    means, stds, captions = encode_pool(vae, world, recipe.pool_size, recipe.single_object_fraction)
    ids = tokenize(tokenizer, captions)
    empty = tokenize(tokenizer, [""])
    scale = vae.config.scaling_factor

    for m in modules.values():
        m.train()
    bar = tqdm(range(start, recipe.steps), initial=start, total=recipe.steps, desc="text encoder + UNet", unit="step")
    for step in bar:
        seed_step(seed, 2, step)
        set_lr(optimizer, cosine_lr(step, recipe.steps, recipe.lr, recipe.warmup))
        idx = torch.randint(0, len(captions), (recipe.batch_size,))
        z0 = (means[idx] + stds[idx] * torch.randn_like(means[idx])) * scale  # [B, 4, h, w]
        tokens = ids[idx].clone()
        tokens[torch.rand(recipe.batch_size) < recipe.caption_dropout] = empty
        noise = torch.randn_like(z0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (recipe.batch_size,))
        pred = unet(scheduler.add_noise(z0, noise, t), t, text_encoder(tokens)[0]).sample
        loss = denoising_loss(pred, noise, t, scheduler, recipe.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 10 == 0 or step == recipe.steps - 1:
            log.write(step, loss=loss.item())
        if (step + 1) % recipe.checkpoint_every == 0 and step + 1 < recipe.steps:
            save_checkpoint(ckpt, step + 1, modules, optimizer)
    for name, module in modules.items():
        with replacing_folder(run_dir / name, overwrite=True) as work:
            module.eval().save_pretrained(work)
    return text_encoder, unet
