"""Few-shot episodes: a class, a query image and k support images of that class, with binary masks.

The sampler works on any `FewShotSource` (the synthetic world in memory, or a data set read
from disk by `segdata.layouts`), so training and evaluation have one code path for both.

Sampling rules (HSNet's protocol, with distinct supports):
  1. a class uniformly among the source's classes that have at least k + 1 images;
  2. a query image uniformly among the images of that class;
  3. k distinct support images of that class, none of them the query.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class FewShotSource(Protocol):
    """What the episode sampler needs from a data set.

    `load` returns an (H, W, 3) uint8 image and an (H, W) integer label map in which category c
    is labelled c + 1 (0 is background and pixels of no interest), the COCO annotation convention.
    """

    categories: Sequence[int]

    def images_of(self, category: int) -> Sequence[int]: ...

    def load(self, image_id: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class Episode:
    """One few-shot task.

    Attributes:
        category: the target class id.
        query_image: (H, W, 3) uint8.
        query_mask: (H, W) uint8 in {0, 1}.
        support_images: k images, each (H_i, W_i, 3) uint8 (real data sets mix sizes).
        support_masks: k masks, each (H_i, W_i) uint8 in {0, 1}.
        query_id, support_ids: image ids in the source, for bookkeeping.
    """

    category: int
    query_image: np.ndarray
    query_mask: np.ndarray
    support_images: list[np.ndarray]
    support_masks: list[np.ndarray]
    query_id: int
    support_ids: tuple[int, ...]

    @property
    def shots(self) -> int:
        return len(self.support_ids)


class EpisodeSampler:
    """Draws episodes of `shots` supports from `source`.

    Args:
        source: the data set.
        shots: number of supports per episode (k >= 1).
    """

    def __init__(self, source: FewShotSource, shots: int):
        if shots < 1:
            raise ValueError(f"shots must be at least 1, got {shots}")
        self.source, self.shots = source, shots
        self.classes = [c for c in source.categories if len(source.images_of(c)) > shots]
        if not self.classes:
            raise ValueError(
                f"no class has the {shots + 1} images a {shots}-shot episode needs; use more images or fewer shots"
            )

    def sample_ids(self, rng: np.random.Generator) -> tuple[int, int, tuple[int, ...]]:
        """(category, query id, support ids) following the module's rules."""
        category = int(rng.choice(self.classes))
        images = list(self.source.images_of(category))
        query = images[int(rng.integers(len(images)))]
        others = [i for i in images if i != query]
        supports = tuple(int(others[j]) for j in rng.choice(len(others), self.shots, replace=False))
        return category, int(query), supports

    def sample(self, rng: np.random.Generator) -> Episode:
        category, query, supports = self.sample_ids(rng)
        return self.episode(category, query, supports)

    def episode(self, category: int, query: int, supports: Sequence[int]) -> Episode:
        """Loads the episode with the given ids and binarises its masks for `category`."""
        q_img, q_lab = self.source.load(query)
        s = [self.source.load(i) for i in supports]
        return Episode(
            category=category,
            query_image=q_img,
            query_mask=(q_lab == category + 1).astype(np.uint8),
            support_images=[img for img, _ in s],
            support_masks=[(lab == category + 1).astype(np.uint8) for _, lab in s],
            query_id=query,
            support_ids=tuple(supports),
        )

    def fixed_episodes(self, count: int, seed: int = 0) -> Iterator[Episode]:
        """The same `count` episodes for every call with the same seed (evaluation)."""
        rng = np.random.default_rng(seed)
        for _ in range(count):
            yield self.sample(rng)
