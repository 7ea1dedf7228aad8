"""Stage 1 of the synth base: an AutoencoderKL that reconstructs scenes and white-on-black masks.

Trained on random crops (the autoencoder is fully convolutional, and a crop costs a quarter of
a full image) mixing scenes and binary category masks, with L1 + MSE reconstruction and SD's
tiny KL weight. After training the latent scaling factor is set to 1 / std of the latents, the
way SD's 0.18215 was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm import tqdm

from modeling import configs
from modeling.imaging import images_to_tensor, masks_to_tensor
from runtime.files import replacing_folder
from segdata.world import SyntheticWorld
from train.checkpoint import resume, save_checkpoint
from train.loop import LossLog, cosine_lr, seed_step, set_lr

VAE_SPLIT = 10  # scene keys (VAE_SPLIT, step, j): never used by evaluation or DiffewS


@dataclass
class VaeRecipe:
    # Colour is learned late: object hue only appears after about 1500 steps (luminance and
    # masks come first), so the stage runs long and gives most of each batch to scenes.
    steps: int = 4000
    batch_size: int = 16
    mask_fraction: float = 0.25  # share of each batch that is binary masks
    crops_per_scene: int = 2  # two crops per rendered scene halve the data-generation time
    crop: int = 64
    lr: float = 8e-4
    warmup: int = 50
    kl_weight: float = 1e-6
    checkpoint_every: int = 200


def vae_batch(world: SyntheticWorld, step: int, recipe: VaeRecipe) -> torch.Tensor:
    """(B, 3, crop, crop) in [-1, 1]: scene crops, then white-on-black mask crops."""
    rng = np.random.default_rng([world.seed, VAE_SPLIT, step])
    n_masks = int(round(recipe.batch_size * recipe.mask_fraction))
    r, c = world.resolution, recipe.crop
    images, masks = [], []
    for j in range(recipe.batch_size):
        scene = world.scene((VAE_SPLIT, step, j // recipe.crops_per_scene))
        y, x = rng.integers(0, r - c + 1, size=2)
        if j < recipe.batch_size - n_masks:
            images.append(scene.image[y : y + c, x : x + c])
        else:
            present = sorted({o.category for o in scene.objects})
            mask = scene.binary_mask(int(rng.choice(present)))
            if rng.random() < 0.3:  # some masks of every object, for more varied shapes
                mask = (scene.instance_mask > 0).astype(np.uint8)
            masks.append(mask[y : y + c, x : x + c])
    parts = [images_to_tensor(np.stack(images))] if images else []
    if masks:  # a small batch may round its mask share to none
        parts.append(masks_to_tensor(np.stack(masks)))
    return torch.cat(parts)


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, dict]:
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample
    l1 = F.l1_loss(recon, x)
    mse = F.mse_loss(recon, x)
    kl = posterior.kl().mean() / x[0].numel()
    return l1 + mse + kl_weight * kl, {"l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, world: SyntheticWorld, n: int = 256) -> float:
    """1 / std of posterior-mean latents of `n` full scenes, rounded to 5 digits."""
    scenes = [world.scene((VAE_SPLIT + 100, 0, j)).image for j in range(n)]
    z = torch.cat(
        [vae.encode(images_to_tensor(np.stack(scenes[i : i + 32]))).latent_dist.mean for i in range(0, n, 32)]
    )
    return round(1.0 / z.std().item(), 5)


def train_vae(world: SyntheticWorld, run_dir: Path, recipe: VaeRecipe, seed: int) -> AutoencoderKL:
    """Trains (or resumes) the autoencoder; returns it with its scaling factor set. Saved to run_dir/vae."""
    final = run_dir / "vae"
    if (final / "config.json").exists():
        return AutoencoderKL.from_pretrained(final, local_files_only=True)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**configs.SYNTH_VAE)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)
    ckpt, log = run_dir / "checkpoints" / "vae", LossLog(run_dir / "logs" / "vae.jsonl")
    start, _ = resume(ckpt, {"vae": vae}, optimizer, log, "the VAE")
    vae.train()
    bar = tqdm(range(start, recipe.steps), initial=start, total=recipe.steps, desc="VAE", unit="step")
    for step in bar:
        seed_step(seed, 1, step)
        set_lr(optimizer, cosine_lr(step, recipe.steps, recipe.lr, recipe.warmup))
        loss, parts = vae_loss(vae, vae_batch(world, step, recipe), recipe.kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 10 == 0 or step == recipe.steps - 1:
            log.write(step, loss=loss.item(), **parts)
        if (step + 1) % recipe.checkpoint_every == 0 and step + 1 < recipe.steps:
            save_checkpoint(ckpt, step + 1, {"vae": vae}, optimizer)
    vae.eval()
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, world))
    with replacing_folder(final, overwrite=True) as work:
        vae.save_pretrained(work)
    return vae
