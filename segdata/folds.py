"""COCO-20i-style category folds: fold f tests the categories {f + 4v}, trains on the rest."""

from __future__ import annotations

from segdata.categories import NUM_CATEGORIES

NUM_FOLDS = 4


def _check(fold: int) -> None:
    if not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"fold must be in 0..{NUM_FOLDS - 1}, got {fold}")


def held_out_categories(fold: int) -> tuple[int, ...]:
    """The held-out categories of `fold` (interleaved, as HSNet splits COCO's 80 classes)."""
    _check(fold)
    return tuple(range(fold, NUM_CATEGORIES, NUM_FOLDS))


def training_categories(fold: int) -> tuple[int, ...]:
    """Every category not held out by `fold`."""
    held_out = set(held_out_categories(fold))
    return tuple(c for c in range(NUM_CATEGORIES) if c not in held_out)
