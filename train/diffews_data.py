"""Episodes for DiffewS training, as VAE latents.

Four sources, one code path (`open_source`):
  * "synth": a fold's training pool of the synthetic world (held-out categories never appear);
  * "synth-variants": the same world, but the classes are every colour x pattern variant of the
    fold's training families (192 classes instead of 18; see `segdata.synthetic`);
  * "coco20i": COCO-20i in the HSNet / Matcher layout (`splits/trn/fold*.pkl`, class id + 1 PNGs);
  * "folders": class folders (FSS-1000 layout: CLASS/ID.jpg + CLASS/ID.png binary mask).

Images are resized to the model resolution (bilinear, antialiased) and masks with nearest
interpolation, as the authors do. The VAE is frozen, so each image's posterior (mean, std) is
computed once and cached; every use draws a fresh sample from it, exactly as encoding anew would.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modeling.imaging import images_to_tensor, masks_to_tensor
from segdata.episodes import Episode, FewShotSource
from segdata.layouts import ClassFolders, Coco20iFolder
from segdata.synthetic import SyntheticFewShot, SyntheticVariantFewShot
from segdata.world import SyntheticWorld

SOURCES = ("synth", "synth-variants", "coco20i", "folders")


def open_source(kind: str, root: Path | None, fold: int, world: SyntheticWorld, pool_size: int) -> FewShotSource:
    """The training data set named by `kind` (see the module docstring)."""
    if kind == "synth":
        return SyntheticFewShot(world, fold=fold, split="trn", size=pool_size)
    if kind == "synth-variants":
        return SyntheticVariantFewShot(world, fold=fold, size=pool_size)
    if root is None:
        raise ValueError(f"--data {kind} needs --data-root pointing at the data set folder")
    if kind == "coco20i":
        return Coco20iFolder(root, fold=fold, split="trn")
    if kind == "folders":
        return ClassFolders(root)
    raise ValueError(f"unknown data source {kind!r}; choose one of {SOURCES}")


def to_resolution(x: torch.Tensor, resolution: int, mode: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, R, R): bilinear (antialiased) for images, nearest for masks."""
    if x.shape[-2:] == (resolution, resolution):
        return x
    kwargs = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
    return F.interpolate(x, size=(resolution, resolution), mode=mode, **kwargs)


class PosteriorCache:
    """Caches the frozen VAE's posterior (mean, std) per image or per (image, class) mask.

    Args:
        vae: the frozen autoencoder.
        resolution: side images are resized to before encoding.
        capacity: entries kept (least recently used are dropped); each is 2 x 4 x h x w floats.
    """

    def __init__(self, vae, resolution: int, capacity: int = 50_000):
        self.vae, self.resolution, self.capacity = vae, resolution, capacity
        self._entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @torch.no_grad()
    def _posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(x).latent_dist
        return dist.mean[0], dist.std[0]

    def get(self, key: tuple, pixels: np.ndarray, is_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std), each (4, h, w), of `pixels` ((H, W, 3) uint8 image or (H, W) binary mask)."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        if is_mask:
            x = to_resolution(masks_to_tensor(pixels[None]), self.resolution, "nearest")
        else:
            x = to_resolution(images_to_tensor(pixels[None]), self.resolution, "bilinear")
        entry = self._posterior(x.to(self.vae.device, self.vae.dtype))
        self._entries[key] = entry
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return entry

    def sample(self, key: tuple, pixels: np.ndarray, is_mask: bool, generator: torch.Generator) -> torch.Tensor:
        """A scaled latent sample (4, h, w), as `vae.encode(x).latent_dist.sample() * scaling_factor`,
        its noise drawn from `generator`."""
        mean, std = self.get(key, pixels, is_mask)
        noise = torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)
        return (mean + std * noise) * self.vae.config.scaling_factor


def episode_latents(cache: PosteriorCache, episodes: list[Episode], seeds: list[int]) -> dict[str, torch.Tensor]:
    """Sampled latents of B episodes with S shots each.

    Args:
        seeds: one per episode, for its posterior noise: an episode's latents depend on its seed
            alone, not on which process draws it or what was drawn before (`train.diffews`).
    Returns:
        "query": (B, 4, h, w), "query_mask": (B, 4, h, w),
        "support": (B, S, 4, h, w), "support_mask": (B, S, 4, h, w).
    """
    shots = {ep.shots for ep in episodes}
    if len(shots) != 1:
        raise ValueError(f"episodes of one batch must share the number of shots, got {sorted(shots)}")
    query, query_mask, support, support_mask = [], [], [], []
    for ep, seed in zip(episodes, seeds, strict=True):
        c = ep.category
        g = torch.Generator(device=cache.vae.device).manual_seed(seed)
        query.append(cache.sample(("image", ep.query_id), ep.query_image, False, g))
        query_mask.append(cache.sample(("mask", ep.query_id, c), ep.query_mask, True, g))
        support.append(
            torch.stack([cache.sample(("image", i), im, False, g) for i, im in zip(ep.support_ids, ep.support_images)])
        )
        support_mask.append(
            torch.stack([cache.sample(("mask", i, c), m, True, g) for i, m in zip(ep.support_ids, ep.support_masks)])
        )
    return {
        "query": torch.stack(query),
        "query_mask": torch.stack(query_mask),
        "support": torch.stack(support),
        "support_mask": torch.stack(support_mask),
    }
