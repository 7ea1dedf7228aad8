"""SLiMe's patched inference around a per-crop scorer, torch-free (shared by PyTorch inference and the runtime).

The released code's `get_patched_masks` (METHOD_SPEC 2.6): the image is resized to the output
size (512 there), n x n square crops of side P are cut with stride (size - P) / (n - 1), each
crop is scored (K maps at the crop's size), the scores are averaged where crops overlap, and the
label map is their argmax (ties and never-kept classes go to the lowest index). n = 1, P = size
is the whole image (the README's setting for PASCAL-Part cars and horses); n = 2, P = 400 of 512
is CelebAMask-HQ's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Patching:
    """Where the crops are cut.

    Attributes:
        output_size: the side the image is resized to before cropping; labels are computed here.
        per_side: n, crops per side (n x n crops).
        patch_size: P, the crop side in output pixels (None: the whole output).
    """

    output_size: int
    per_side: int = 1
    patch_size: int | None = None

    @property
    def side(self) -> int:
        return self.output_size if self.patch_size is None else self.patch_size

    def check(self) -> None:
        if self.output_size < 8:
            raise ValueError(f"output size must be at least 8 pixels, got {self.output_size}")
        if self.per_side < 1:
            raise ValueError(f"patches per side must be at least 1, got {self.per_side}")
        if not 8 <= self.side <= self.output_size:
            raise ValueError(f"patch size must be between 8 and the output size {self.output_size}, got {self.side}")
        if self.per_side > 1 and self.side == self.output_size:
            raise ValueError(f"{self.per_side} patches per side of the whole image would all be the same crop")

    def origins(self) -> list[tuple[int, int]]:
        """(top, left) of every crop, row by row."""
        self.check()
        if self.per_side == 1:
            steps = [0]
        else:
            stride = (self.output_size - self.side) / (self.per_side - 1)
            steps = [int(i * stride) for i in range(self.per_side)]
        return [(top, left) for top in steps for left in steps]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, bilinear (PIL, antialiased when shrinking)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) uint8 labels -> (height, width), nearest."""
    if labels.shape == (height, width):
        return labels
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))


def patched_scores(image: np.ndarray, score_crop: Callable[[np.ndarray], np.ndarray], patching: Patching) -> np.ndarray:
    """The overlap-averaged class scores of `image` at the output size.

    Args:
        image: (H, W, 3) uint8 RGB.
        score_crop: (P, P, 3) uint8 crop -> (K, P, P) float32 scores.
    Returns:
        (K, output_size, output_size) float32.
    """
    size, side = patching.output_size, patching.side
    resized = resize_image(image, size)
    total, count = None, np.zeros((size, size), np.float32)
    for top, left in patching.origins():
        scores = score_crop(np.ascontiguousarray(resized[top : top + side, left : left + side]))
        if total is None:
            total = np.zeros((scores.shape[0], size, size), np.float32)
        total[:, top : top + side, left : left + side] += scores
        count[top : top + side, left : left + side] += 1
    return total / (count + 1e-7)


def labels_from_scores(scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, S, S) scores -> (height, width) uint8 labels: argmax at S x S, then nearest-resized."""
    if scores.shape[0] > 256:
        raise ValueError(f"{scores.shape[0]} classes do not fit uint8 labels")
    return resize_labels(scores.argmax(axis=0).astype(np.uint8), height, width)


def segment_parts(image: np.ndarray, score_crop: Callable[[np.ndarray], np.ndarray], patching: Patching) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8 part labels (0 = background) at the image's own size."""
    scores = patched_scores(image, score_crop, patching)
    return labels_from_scores(scores, image.shape[0], image.shape[1])
