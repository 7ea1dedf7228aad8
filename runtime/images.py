"""Image and mask inputs for the runtime: file paths, PIL images or arrays -> the graphs' uint8 arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

ImageLike = str | os.PathLike | Image.Image | np.ndarray


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path} is not a readable image ({err})") from err
    return image


def load_image(image: ImageLike) -> np.ndarray:
    """-> (H, W, 3) uint8 RGB. Arrays must already be (H, W, 3) uint8; grey and RGBA files are converted."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"an image array must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        return np.ascontiguousarray(image)
    if not isinstance(image, Image.Image):
        image = _open(image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_mask(mask: ImageLike) -> np.ndarray:
    """-> (H, W) uint8 in {0, 1}: foreground wherever the mask is non-zero (any channel of a colour file)."""
    if isinstance(mask, np.ndarray):
        array = mask
    else:
        if not isinstance(mask, Image.Image):
            mask = _open(mask)
        array = np.asarray(mask.convert("RGB") if mask.mode not in ("1", "L", "P", "I", "I;16") else mask)
        if mask.mode == "P":  # palette files (VOC style): the index is the label
            array = np.asarray(mask)
    if array.ndim == 3:
        array = array.any(axis=2)
    if array.ndim != 2:
        raise ValueError(f"a mask must be (H, W) (or (H, W, C) with foreground non-zero), got shape {array.shape}")
    return (array != 0).astype(np.uint8)


def check_pair(image: np.ndarray, mask: np.ndarray, what: str) -> None:
    """Raises ValueError when a support mask does not fit its image or marks nothing."""
    if image.shape[:2] != mask.shape:
        raise ValueError(
            f"{what}: the mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}"
        )
    if not mask.any():
        raise ValueError(f"{what}: the mask is empty; a support needs at least one foreground pixel")


def overlay(image: np.ndarray, mask: np.ndarray, colour=(255, 64, 32), alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image with the (H, W) mask tinted in `colour`."""
    out = image.astype(np.float32)
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
    return out.round().astype(np.uint8)
