"""Held-out synthetic samples at a few image sizes: what parity checks, benchmarks and tests feed the models.

    episodes = held_out_episodes(128, shots=2, count=3)     # DiffewS: model size, wider, taller
    scenes = held_out_part_scenes(128, count=3)             # SLiMe: (name, image) at three crop sizes

Every sample is fixed by its seeds, so the same call gives the same episodes in every run and
process. `resize_array` is the one PIL resize the non-runtime code uses (bilinear for images,
nearest for masks and label maps).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from segdata.episodes import Episode, EpisodeSampler

# (width, height) as multiples of the model resolution: square, wider, taller, smaller.
SIZE_FACTORS = ((1.0, 1.0), (1.5, 1.0), (1.0, 1.25), (0.75, 0.75))


def resize_array(array: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    """(H, W[, C]) uint8 -> (height, width[, C]); bilinear (antialiased when shrinking), or nearest for masks."""
    if array.shape[:2] == (height, width):
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), Image.NEAREST if nearest else Image.BILINEAR))


def episode_at_size(episode: Episode, width: int, height: int) -> Episode:
    """The episode with every image bilinearly and every mask nearest-resized to width x height (masks uint8)."""
    return episode_at_sizes(episode, (width, height), [(width, height)] * episode.shots)


def episode_at_sizes(episode: Episode, query: tuple[int, int], supports: list[tuple[int, int]]) -> Episode:
    """The episode with its query resized to `query` and support j to `supports[j]`, (width, height) each."""
    (qw, qh), shots = query, list(zip(episode.support_images, episode.support_masks, supports, strict=True))
    return replace(
        episode,
        query_image=resize_array(episode.query_image, qw, qh),
        query_mask=resize_array(episode.query_mask.astype(np.uint8), qw, qh, nearest=True),
        support_images=[resize_array(im, w, h) for im, _, (w, h) in shots],
        support_masks=[resize_array(m.astype(np.uint8), w, h, nearest=True) for _, m, (w, h) in shots],
    )


def size_cycle(resolution: int, count: int, factors=SIZE_FACTORS) -> list[tuple[int, int]]:
    """`count` (width, height) sizes cycling through `factors` x `resolution`."""
    return [
        (int(resolution * fw), int(resolution * fh)) for fw, fh in (factors[i % len(factors)] for i in range(count))
    ]


def held_out_episodes(
    resolution: int,
    shots: int,
    count: int = 3,
    fold: int = 0,
    seed: int = 0,
    pool: int = 200,
    factors=SIZE_FACTORS,
    world_seed: int | None = None,
) -> list[Episode]:
    """`count` fixed episodes of the fold's held-out categories, the i-th at size factors[i % len] x resolution.

    Args:
        seed: the episode seed (`EpisodeSampler.fixed_episodes`); world_seed: the world's (default: `seed`).
        pool: images in the held-out pool the episodes are drawn from.
    """
    from segdata.synthetic import SyntheticFewShot
    from segdata.world import SyntheticWorld

    world = SyntheticWorld(resolution=resolution, seed=seed if world_seed is None else world_seed)
    source = SyntheticFewShot(world, fold=fold, split="val", size=pool)
    episodes = EpisodeSampler(source, shots).fixed_episodes(count, seed=seed)
    return [episode_at_size(ep, w, h) for ep, (w, h) in zip(episodes, size_cycle(resolution, count, factors))]


def held_out_part_scenes(resolution: int, count: int = 3, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Synthetic part scenes ("WxH", image) at the model size, a smaller crop and a wider one (SLiMe parity)."""
    from segdata.synthetic import SyntheticParts
    from segdata.world import SyntheticWorld

    parts = SyntheticParts(SyntheticWorld(resolution=resolution, seed=seed), category=0, split="val", size=count)
    sizes = size_cycle(resolution, count, ((1.0, 1.0), (0.75, 0.75), (1.25, 1.0)))
    return [(f"{w}x{h}", resize_array(parts[i][0], w, h)) for i, (w, h) in enumerate(sizes)]
