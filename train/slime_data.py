"""SLiMe's training augmentations (METHOD_SPEC 2.5), with pillow instead of albumentations.

Per draw, in the released code's order: resize to R; horizontal flip (p 0.5); Gaussian blur with
an odd kernel of 3 or 5 (p 0.5); a random square crop of side U[min_crop_ratio, 1] x R whose
position is redrawn until it keeps more than 30 % of the pixels of the "current part" (the part
index cycles over 0..K-1 from draw to draw); resize to R; rotation within +-max_rotation degrees
(p 0.5, zero fill for image and labels). Labels are then nearest-resized to the latent side S.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

CROP_KEEP_FRACTION = 0.3
CROP_ATTEMPTS = 100  # then the best position seen is used


def _sigma_for_kernel(kernel: int) -> float:
    """OpenCV's default sigma for a Gaussian kernel of this size (what albumentations' GaussianBlur uses)."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


@dataclass
class PartAugmenter:
    """Draws augmented (image, labels) pairs from the annotated examples.

    Args:
        resolution: R, the model's image side.
        latent_side: S, the side of the label map the losses compare with.
        num_classes: K.
        min_crop_ratio: smallest crop side as a fraction of R (0.8 by default; 0.6 for cars and faces).
        max_rotation: degrees (30; the released code uses 10 for faces).
    """

    resolution: int
    latent_side: int
    num_classes: int
    min_crop_ratio: float = 0.8
    max_rotation: float = 30.0

    def __post_init__(self):
        if not 0 < self.min_crop_ratio <= 1:
            raise ValueError(f"min crop ratio must be in (0, 1], got {self.min_crop_ratio}")
        self._current_part = 0

    def __call__(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8, (H, W) int labels -> (R, R, 3) uint8 and (S, S) int64 labels."""
        r = self.resolution
        img = Image.fromarray(image).resize((r, r), Image.BILINEAR)
        lab = Image.fromarray(labels.astype(np.uint8)).resize((r, r), Image.NEAREST)
        if rng.random() < 0.5:
            img, lab = img.transpose(Image.FLIP_LEFT_RIGHT), lab.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:
            kernel = int(rng.choice([3, 5]))
            img = img.filter(ImageFilter.GaussianBlur(_sigma_for_kernel(kernel)))
        box = self._crop_box(np.asarray(lab), rng)
        img = img.crop(box).resize((r, r), Image.BILINEAR)
        lab = lab.crop(box).resize((r, r), Image.NEAREST)
        if rng.random() < 0.5:
            angle = float(rng.uniform(-self.max_rotation, self.max_rotation))
            img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=(0, 0, 0))
            lab = lab.rotate(angle, resample=Image.NEAREST, fillcolor=0)
        small = lab.resize((self.latent_side, self.latent_side), Image.NEAREST)
        return np.asarray(img), np.asarray(small).astype(np.int64)

    def _crop_box(self, labels: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """A square crop keeping > 30 % of the current part's pixels (left, top, right, bottom)."""
        r = self.resolution
        part = self._current_part
        self._current_part = (self._current_part + 1) % self.num_classes
        side = int(round(rng.uniform(self.min_crop_ratio, 1.0) * r))
        part_pixels = labels == part
        total = int(part_pixels.sum())
        best, best_kept = (0, 0, side, side), -1.0
        for _ in range(CROP_ATTEMPTS):
            top, left = (int(v) for v in rng.integers(0, r - side + 1, size=2))
            if total == 0:  # the part is not in this image: any position
                return left, top, left + side, top + side
            kept = part_pixels[top : top + side, left : left + side].sum() / total
            if kept > CROP_KEEP_FRACTION:
                return left, top, left + side, top + side
            if kept > best_kept:
                best, best_kept = (left, top, left + side, top + side), kept
        return best
