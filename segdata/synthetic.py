"""The synthetic world as few-shot and part-segmentation data sets.

    fewshot = SyntheticFewShot(world, fold=0, split="trn", size=4000)  # train categories only
    episodes = EpisodeSampler(fewshot, shots=1)
    parts = SyntheticParts(world, category=3, split="train", size=10)

Image pools are keyed by split, so no two pools share a scene:
  * "trn" of fold f: scenes drawn **only** from fold f's training categories, so training
    never sees a held-out category, not even as unlabelled background;
  * "val": scenes of every category, shared by all folds; episodes target the fold's held-out
    categories.

`SyntheticVariantFewShot` is a training pool with many more classes: every colour x pattern
variant of the shape families that have no held-out category (192 classes for a fold, against
18 fixed training categories), so training episodes cannot be solved by memorising classes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from segdata.categories import CATEGORIES, appearance_variants
from segdata.folds import held_out_categories, training_categories
from segdata.world import Scene, SyntheticWorld

SPLIT_KEYS = {"trn": 20, "val": 21}
VARIANT_SPLIT_KEY = 22
PART_SPLIT_KEY = 30
PART_SPLITS = ("train", "val", "test")


class SyntheticFewShot:
    """A pool of `size` scenes with per-class image lists (a `FewShotSource`).

    Args:
        world: the scene generator.
        fold: 0..3, which categories are held out.
        split: "trn" (training categories of the fold) or "val" (held-out categories).
        size: number of scenes in the pool.
    """

    def __init__(self, world: SyntheticWorld, fold: int, split: str = "trn", size: int = 4000):
        if split not in SPLIT_KEYS:
            raise ValueError(f"split must be one of {tuple(SPLIT_KEYS)}, got {split!r}")
        self.world, self.fold, self.split, self.size = world, fold, split, size
        self.categories = list(training_categories(fold) if split == "trn" else held_out_categories(fold))
        self._allowed = self.categories if split == "trn" else None
        self._key_fold = fold if split == "trn" else 0
        self._index_classes()

    def _index_classes(self) -> None:
        """Renders the pool once to list, per class, the scenes where it is visible."""
        self.scene = lru_cache(maxsize=4096)(self._scene)
        self._class_images: dict[int, list[int]] = {c: [] for c in self.categories}
        for i in range(self.size):
            for c in self.scene(i).categories_present:
                if c in self._class_images:
                    self._class_images[c].append(i)

    def _scene(self, image_id: int) -> Scene:
        if not 0 <= image_id < self.size:
            raise IndexError(f"image id {image_id} outside the pool of {self.size}")
        return self.world.scene((SPLIT_KEYS[self.split], self._key_fold, image_id), self._allowed)

    def images_of(self, category: int) -> list[int]:
        return self._class_images.get(category, [])

    def load(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        scene = self.scene(image_id)
        return scene.image, scene.category_mask

    def image_name(self, image_id: int) -> str:
        return f"{self.split}_f{self._key_fold}_{image_id:06d}"


class SyntheticVariantFewShot(SyntheticFewShot):
    """A training pool whose classes are all appearance variants of the fold's training families.

    A family with any held-out category is left out entirely, so no held-out category (not even
    its shape) is ever seen. Class ids index `self.world.categories` (the variant table).

    Args:
        world: supplies resolution, seed and object count; the pool renders with the variant table.
        fold: 0..3.
        size: number of scenes.
    """

    def __init__(self, world: SyntheticWorld, fold: int, size: int = 4000):
        held_out_families = {CATEGORIES[c].family.name for c in held_out_categories(fold)}
        families = tuple(dict.fromkeys(c.family for c in CATEGORIES if c.family.name not in held_out_families))
        variant_world = SyntheticWorld(
            resolution=world.resolution,
            seed=world.seed,
            max_objects=world.max_objects,
            categories=appearance_variants(families),
        )
        variant_world.min_visible_pixels = world.min_visible_pixels
        self.world, self.fold, self.split, self.size = variant_world, fold, "variants", size
        self.categories = list(range(len(variant_world.categories)))
        self._allowed = None
        self._key_fold = fold
        self._index_classes()

    def _scene(self, image_id: int) -> Scene:
        if not 0 <= image_id < self.size:
            raise IndexError(f"image id {image_id} outside the pool of {self.size}")
        return self.world.scene((VARIANT_SPLIT_KEY, self._key_fold, image_id))

    def image_name(self, image_id: int) -> str:
        return f"variants_f{self._key_fold}_{image_id:06d}"


class SyntheticParts:
    """Single-object scenes of one category with part masks (SLiMe's setting).

    Label 0 is background and label p + 1 is part p of the category's family, so
    `class_names[k]` names label k. "train_1" and "train_10" of SLiMe are the first 1 and the
    first 10 images of the "train" split.
    """

    def __init__(self, world: SyntheticWorld, category: int, split: str = "train", size: int = 10):
        if split not in PART_SPLITS:
            raise ValueError(f"split must be one of {PART_SPLITS}, got {split!r}")
        if not 0 <= category < len(CATEGORIES):
            raise ValueError(f"category must be in 0..{len(CATEGORIES) - 1}, got {category}")
        self.world, self.category, self.split, self.size = world, category, split, size
        self.class_names = ["background", *CATEGORIES[category].family.parts]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) uint8 part labels."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} outside the {self.size} images of this split")
        scene = self.world.part_scene(
            (PART_SPLIT_KEY, self.category, PART_SPLITS.index(self.split), index), self.category
        )
        return scene.image, scene.part_mask
