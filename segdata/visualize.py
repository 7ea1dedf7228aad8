"""Overlays and grids for looking at data and predictions (numpy + pillow only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

PALETTE = np.array(
    [
        (0, 0, 0),
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
    ],
    np.uint8,
)


def overlay_mask(
    image: np.ndarray, mask: np.ndarray, colour=(255, 40, 40), alpha: float = 0.5, outline: bool = True
) -> np.ndarray:
    """(H, W, 3) uint8: `image` with the pixels of the (H, W) binary `mask` tinted (and outlined).

    Args:
        colour: one RGB colour, or an (H, W, 3) array of per-pixel colours (a colourised label map).
        outline: draw the mask's one-pixel border in full colour.
    """
    out = image.astype(np.float32)
    m = mask.astype(bool)
    colours = np.broadcast_to(np.asarray(colour, np.float32), out.shape)
    out[m] = out[m] * (1 - alpha) + colours[m] * alpha
    if outline:
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = colours[edge]
    return out.round().astype(np.uint8)


def colourize_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 colours (0 is black)."""
    return PALETTE[labels.astype(np.int64) % len(PALETTE)]


def labelled_grid(tiles: Sequence[np.ndarray], titles: Sequence[str], columns: int) -> np.ndarray:
    """Tiles of equal size in a grid, each with a one-line title above it."""
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // columns)
    canvas = Image.new("RGB", (columns * (w + 4), rows * (h + 16)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (tile, title) in enumerate(zip(tiles, titles)):
        x, y = (k % columns) * (w + 4), (k // columns) * (h + 16)
        canvas.paste(Image.fromarray(tile), (x, y + 14))
        draw.text((x + 1, y + 1), title[: max(8, w // 6)], fill="black")
    return np.asarray(canvas)
