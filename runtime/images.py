"""Image and mask inputs for the runtime: file paths, PIL images or arrays -> the graphs' uint8 arrays.

Files and PIL images are read as an image viewer shows them: the EXIF orientation is applied
(`ImageOps.exif_transpose`), so a phone photo and a mask drawn on it as displayed line up.

Images -> (H, W, 3) uint8 RGB:
- 8-bit grey, palette, RGB, CMYK, ... are converted to RGB; an alpha channel is dropped (the
  pixels as stored, not composited over a background).
- 16-bit grey (PNG "I;16", or 32-bit integer "I" holding 0..65535) is scaled to 8 bits (v / 257),
  not clipped.
- float images (mode "F") are refused: their range (0..1 or 0..255) is not recorded in the file.
- arrays must already be (H, W, 3) uint8.

Masks -> (H, W) uint8 in {0, 1}, foreground = 1:
- integer pixels (1-bit, 8-bit, 16-bit, palette index, any channel of a colour mask): non-zero
  is foreground. Soft (anti-aliased) edges therefore count as foreground down to value 1:
  binarise a feathered mask at the level you mean before passing it.
- float pixels (mode "F", float arrays): values in [0, 1], foreground where >= 0.5; NaN, inf
  or values outside [0, 1] are refused.
- alpha: a mask with transparency (RGBA, LA, PA, or an (H, W, 4) array) is accepted only where
  its colour and its alpha mark the same pixels (colour non-zero exactly where alpha > 0), or
  where it is fully opaque; otherwise it is ambiguous and refused, with how to pass either.
- arrays: bool, integer or float, (H, W) or (H, W, C) with C in {1, 3, 4}.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runtime.files import replacing_file

ImageLike = str | os.PathLike | Image.Image | np.ndarray
SINGLE_IMAGE_TYPES = (str, os.PathLike, Image.Image, np.ndarray)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"{path} is larger than Pillow's decompression-bomb limit ({err}); if the image is genuine, "
            "downscale it first or raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path} is not a readable image ({err})") from err
    return image


def _as_pil(image: str | os.PathLike | Image.Image, what: str) -> Image.Image:
    """A file path or PIL image -> the PIL image as a viewer displays it (EXIF orientation applied)."""
    if isinstance(image, (str, os.PathLike)):
        image = _open(image)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"{what} must be a file path, a PIL image or a numpy array, got {type(image).__name__}")
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as err:  # a malformed EXIF block
        raise ValueError(f"{what}: its EXIF orientation cannot be read ({err})") from err


def _sixteen_bit(image: Image.Image, what: str) -> np.ndarray:
    """A 16-bit grey image -> (H, W) uint8, scaled (65535 -> 255)."""
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"{what}: 32-bit integer pixels outside 0..65535; save it as an 8- or 16-bit image")
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def load_image(image: ImageLike, what: str = "image") -> np.ndarray:
    """-> (H, W, 3) uint8 RGB (module docstring: what is read how)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"{what}: an image array must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}; "
                "for other data pass a file path or a PIL image"
            )
        return np.ascontiguousarray(image)
    pil = _as_pil(image, what)
    if pil.mode in SIXTEEN_BIT_MODES:
        return np.repeat(_sixteen_bit(pil, what)[:, :, None], 3, axis=2)
    if pil.mode == "F":
        raise ValueError(f"{what}: float images do not say their range; convert it to 8-bit RGB first")
    return np.asarray(pil.convert("RGB"), dtype=np.uint8)


def _float_mask(values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(
            f"{what}: a float mask has NaN or infinite values; pass values in [0, 1] (>= 0.5 is foreground)"
        )
    if values.size and (values.min() < 0 or values.max() > 1):
        raise ValueError(
            f"{what}: a float mask must lie in [0, 1] (>= 0.5 is foreground), got {values.min():g}..{values.max():g}; "
            "scale it, or pass an integer mask (non-zero is foreground)"
        )
    return values >= 0.5


def _with_alpha(colour: np.ndarray, alpha: np.ndarray, what: str) -> np.ndarray:
    """Foreground of a mask with an alpha channel, or ValueError when colour and alpha disagree."""
    by_colour = colour.any(axis=2) if colour.ndim == 3 else colour != 0
    if (alpha == alpha.max()).all() and alpha.max() > 0:  # fully opaque: the alpha says nothing
        return by_colour
    by_alpha = alpha != 0
    if np.array_equal(by_colour, by_alpha):
        return by_colour
    raise ValueError(
        f"{what}: the mask's alpha channel and its colour mark different pixels, so it is ambiguous; "
        "pass the one that marks the object: mask.getchannel('A') (PIL) or array[..., 3] for the alpha, "
        "mask.convert('RGB') or array[..., :3] for the colour"
    )


def _array_mask(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 4:  # each channel read by the dtype's rule, then compared
        channels = [_array_mask(array[:, :, c], what) for c in range(4)]
        return _with_alpha(np.stack(channels[:3], axis=2), channels[3], what)
    if array.ndim == 3 and array.shape[2] in (1, 3):
        return np.stack([_array_mask(array[:, :, c], what) for c in range(array.shape[2])], axis=2).any(axis=2)
    if array.ndim != 2:
        raise ValueError(f"{what}: a mask must be (H, W) (or (H, W, C) with C in 1, 3, 4), got shape {array.shape}")
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.integer):
        return array != 0
    if np.issubdtype(array.dtype, np.floating):
        return _float_mask(array, what)
    raise ValueError(f"{what}: a mask array must be bool, integer or float, got {array.dtype}")


def load_mask(mask: ImageLike, what: str = "mask") -> np.ndarray:
    """-> (H, W) uint8 in {0, 1} (module docstring: the reading rules)."""
    if isinstance(mask, np.ndarray):
        return _array_mask(mask, what).astype(np.uint8)
    pil = _as_pil(mask, what)
    if pil.mode in ("P", "1", "L") or pil.mode in SIXTEEN_BIT_MODES:  # P: the palette index is the label
        foreground = np.asarray(pil) != 0
    elif pil.mode == "F":
        foreground = _float_mask(np.asarray(pil), what)
    elif pil.mode in ALPHA_MODES:
        rgba = np.asarray(pil.convert("RGBA"))
        colour = np.asarray(pil)[:, :, 0] if pil.mode == "PA" else rgba[:, :, :3]
        foreground = _with_alpha(colour, rgba[:, :, 3], what)
    else:
        foreground = np.asarray(pil.convert("RGB")).any(axis=2)
    return foreground.astype(np.uint8)


def as_image_list(items, what: str) -> list:
    """One image (path, PIL image, array) -> [it]; a list, tuple or other iterable of images -> a list."""
    if isinstance(items, SINGLE_IMAGE_TYPES):
        if isinstance(items, np.ndarray) and items.ndim == 4:
            raise ValueError(f"{what}: got one (S, H, W, C) array; pass a list of images, one per shot")
        return [items]
    if isinstance(items, (bytes, dict)) or not isinstance(items, Iterable):
        raise ValueError(
            f"{what} must be an image (path, PIL image or array) or a list of them, got {type(items).__name__}"
        )
    return list(items)


def check_pair(image: np.ndarray, mask: np.ndarray, what: str) -> None:
    """Raises ValueError when a support mask does not fit its image or marks nothing."""
    if image.shape[:2] != mask.shape:
        raise ValueError(
            f"{what}: the mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}; "
            "pass a mask of the image's size"
        )
    if not mask.any():
        raise ValueError(f"{what}: the mask is empty; a support needs at least one foreground pixel")


def save_png(array: np.ndarray, path: Path, overwrite: bool) -> Path:
    """Writes a uint8 array as a PNG through a temporary file (`runtime.files`): a failed write keeps the old file."""
    with replacing_file(path, overwrite) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path
