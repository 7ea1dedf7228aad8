"""Conversions between uint8 images / binary masks and the VAE's [-1, 1] tensors and latents.

Masks are rendered white-on-black (foreground +1, background -1) on three channels, the
DiffewS convention, so the same VAE encodes images and masks.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    return torch.tensor(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # a copy: inputs may be read-only


def masks_to_tensor(masks: np.ndarray) -> torch.Tensor:
    """(B, H, W) {0, 1} -> (B, 3, H, W) float32, foreground +1 and background -1."""
    if masks.ndim != 3:
        raise ValueError(f"expected (B, H, W) binary masks, got shape {masks.shape}")
    m = torch.from_numpy((masks > 0).astype(np.float32)) * 2 - 1
    return m[:, None].expand(-1, 3, -1, -1).contiguous()


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def tensor_to_masks(x: torch.Tensor, threshold: float = 0.0) -> np.ndarray:
    """(B, 3, H, W) decoded masks in [-1, 1] -> (B, H, W) bool: channel mean above `threshold`."""
    return (x.detach().float().mean(dim=1) > threshold).cpu().numpy()


def vae_latents(
    vae: AutoencoderKL, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) latents scaled by the VAE's factor: the posterior mean,
    or with `sample` a draw from it (from `generator`, else the global RNG)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator) if sample else posterior.mean
    return z * vae.config.scaling_factor


@torch.no_grad()
def encode_mean(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8) scaled latents from the posterior mean (no gradients)."""
    return vae_latents(vae, x)


@torch.no_grad()
def decode(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """(B, 4, h, w) scaled latents -> (B, 3, 8h, 8w) in [-1, 1] (clamped)."""
    return vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)
