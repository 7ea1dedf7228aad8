"""A procedural world of cluttered scenes with labelled objects and parts, deterministic by seed.

Every scene is a pure function of (world seed, key): the key is a tuple of integers such as
(split, fold, index), so any scene can be regenerated on demand without storing it. Labels
are painted together with the pixels, so the masks match the image exactly.

Example:
    world = SyntheticWorld(resolution=128, seed=0)
    scene = world.scene((0, 0, 17))
    scene.image            # (128, 128, 3) uint8
    scene.category_mask    # (128, 128) uint8: 0 background, c + 1 for CATEGORIES[c]

A world can also draw from another category table (`categories=`), e.g. the appearance
variants of some families that few-shot training uses for class diversity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from segdata.categories import CATEGORIES, Category

_PATTERN_PERIOD_FRACTION = 1 / 6  # stripe / dot / check period, as a fraction of object size


@dataclass(frozen=True)
class PlacedObject:
    """Where and how one object is drawn.

    Attributes:
        category: index into `CATEGORIES`.
        centre: (x, y) of the object's box centre, in pixels.
        size: side of the object's square box before rotation, in pixels.
        angle: counter-clockwise rotation in degrees.
        brightness: multiplicative colour jitter of the whole object.
        tint: additive per-channel RGB jitter.
    """

    category: int
    centre: tuple[float, float]
    size: int
    angle: float
    brightness: float = 1.0
    tint: tuple[int, int, int] = (0, 0, 0)


@dataclass
class Scene:
    """One rendered image with its labels.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        category_mask: (H, W) uint8; 0 is background, c + 1 is category c.
        instance_mask: (H, W) uint8; 0 is background, i + 1 is `objects[i]`.
        part_mask: (H, W) uint8; 0 is background, p + 1 is part p of the covering object's family.
        objects: every placed object, in painting order (later ones occlude earlier ones).
        visible_pixels: per object, how many pixels it still covers after occlusion.
        caption: names the clearly visible objects, e.g. "a red striped mushroom and a blue plain car".
    """

    image: np.ndarray
    category_mask: np.ndarray
    instance_mask: np.ndarray
    part_mask: np.ndarray
    objects: tuple[PlacedObject, ...]
    visible_pixels: tuple[int, ...]
    caption: str
    categories_present: frozenset[int] = field(default_factory=frozenset)

    def binary_mask(self, category: int) -> np.ndarray:
        """(H, W) uint8 in {0, 1}: the pixels of `category`."""
        return (self.category_mask == category + 1).astype(np.uint8)


class SyntheticWorld:
    """Generates scenes of several objects on a textured, cluttered background.

    Args:
        resolution: side of the square images in pixels.
        seed: world seed; together with a scene key it fixes every pixel.
        max_objects: at most this many objects per scene (at least one).
        min_caption_pixels: an object is named in the caption (and counts as present for
            episode sampling) only if at least this fraction of the image shows it.
        categories: the category table object ids index (default: the world's `CATEGORIES`);
            at most 254 entries, so that category masks fit uint8.
    """

    def __init__(
        self,
        resolution: int = 128,
        seed: int = 0,
        max_objects: int = 4,
        min_visible_fraction: float = 0.01,
        categories: Sequence[Category] = CATEGORIES,
    ):
        if not 0 < len(categories) < 255:
            raise ValueError(f"a world needs 1 to 254 categories (uint8 masks), got {len(categories)}")
        if resolution < 32:
            raise ValueError(f"resolution must be at least 32 pixels, got {resolution}")
        self.resolution = resolution
        self.seed = seed
        self.max_objects = max_objects
        self.categories = tuple(categories)
        self.min_visible_pixels = max(1, int(min_visible_fraction * resolution * resolution))

    # ----------------------------------------------------------------- sampling
    def _rngs(self, key: Sequence[int]) -> tuple[np.random.Generator, np.random.Generator]:
        layout_seq, texture_seq = np.random.SeedSequence([self.seed, *key]).spawn(2)
        return np.random.default_rng(layout_seq), np.random.default_rng(texture_seq)

    def sample_layout(
        self, rng: np.random.Generator, categories: Sequence[int] | None = None
    ) -> tuple[PlacedObject, ...]:
        """Draws 1..max_objects objects of the allowed categories (all when None)."""
        allowed = list(range(len(self.categories))) if categories is None else list(categories)
        if not allowed:
            raise ValueError("sample_layout needs at least one allowed category")
        r = self.resolution
        n = int(rng.integers(1, self.max_objects + 1))
        objects = []
        for _ in range(n):
            size = int(rng.uniform(0.28, 0.6) * r)
            objects.append(
                PlacedObject(
                    category=int(rng.choice(allowed)),
                    centre=(float(rng.uniform(0.15, 0.85) * r), float(rng.uniform(0.15, 0.85) * r)),
                    size=size,
                    angle=float(rng.uniform(-30, 30)),
                    brightness=float(rng.uniform(0.85, 1.15)),
                    tint=tuple(int(v) for v in rng.integers(-12, 13, size=3)),
                )
            )
        return tuple(objects)

    def single_object_layout(self, rng: np.random.Generator, category: int) -> tuple[PlacedObject, ...]:
        """One large object, fully inside the image: the part-segmentation setting."""
        r = self.resolution
        size = int(rng.uniform(0.62, 0.8) * r)
        margin = size * 0.72  # half-diagonal of a box rotated by up to 20 degrees
        lo, hi = margin, r - margin
        centre = (float(rng.uniform(lo, max(lo, hi))), float(rng.uniform(lo, max(lo, hi))))
        return (
            PlacedObject(
                category=category,
                centre=centre,
                size=size,
                angle=float(rng.uniform(-20, 20)),
                brightness=float(rng.uniform(0.85, 1.15)),
                tint=tuple(int(v) for v in rng.integers(-12, 13, size=3)),
            ),
        )

    # ---------------------------------------------------------------- rendering
    def scene(self, key: Sequence[int], categories: Sequence[int] | None = None) -> Scene:
        """The scene for `key`, with objects drawn only from `categories` (all when None)."""
        layout_rng, texture_rng = self._rngs(key)
        return self.render(self.sample_layout(layout_rng, categories), texture_rng)

    def part_scene(self, key: Sequence[int], category: int) -> Scene:
        """A single-object scene of `category` for part segmentation."""
        layout_rng, texture_rng = self._rngs(key)
        return self.render(self.single_object_layout(layout_rng, category), texture_rng)

    def render(self, objects: Sequence[PlacedObject], rng: np.random.Generator) -> Scene:
        """Paints the background, clutter and `objects` (in order) and their labels."""
        r = self.resolution
        image = _background(r, rng)
        instance = np.zeros((r, r), np.uint8)
        parts = np.zeros((r, r), np.uint8)
        for i, obj in enumerate(objects):
            rgb, labels = _object_sprite(self.categories[obj.category], obj, rng)
            _paste(image, instance, parts, rgb, labels, obj.centre, i + 1)
        category_mask = np.zeros((r, r), np.uint8)
        visible = []
        for i, obj in enumerate(objects):
            here = instance == i + 1
            category_mask[here] = obj.category + 1
            visible.append(int(here.sum()))
        named = [o for o, v in zip(objects, visible) if v >= self.min_visible_pixels]
        caption = " and ".join(f"a {self.categories[o.category].name}" for o in named)
        return Scene(
            image=image,
            category_mask=category_mask,
            instance_mask=instance,
            part_mask=parts,
            objects=tuple(objects),
            visible_pixels=tuple(visible),
            caption=caption,
            categories_present=frozenset(o.category for o in named),
        )


def _smooth_noise(r: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """(r, r) float32 noise in [0, 1] with about `cells` blobs per side."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((r, r), Image.BICUBIC)
    return np.asarray(img, np.float32) / 255.0


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(70, 190)
    return np.clip(grey + rng.uniform(-30, 30, size=3), 0, 255)


def _background(r: int, rng: np.random.Generator) -> np.ndarray:
    """(r, r, 3) uint8: a two-colour low-frequency field, fine grain, and muted clutter shapes."""
    a, b = _muted_colour(rng), _muted_colour(rng)
    t = _smooth_noise(r, rng, int(rng.integers(2, 6)))[..., None]
    field_ = a * t + b * (1 - t)
    field_ += rng.normal(0, 6, size=(r, r, 1)) + _smooth_noise(r, rng, r // 8)[..., None] * 20 - 10
    canvas = Image.fromarray(np.clip(field_, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(4, 14))):
        colour = tuple(int(c) for c in _muted_colour(rng))
        x0, y0 = rng.uniform(-0.1, 1.0, size=2) * r
        w, h = rng.uniform(0.04, 0.25, size=2) * r
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.line([x0, y0, x0 + w * 2, y0 + h * 2], fill=colour, width=max(1, int(r / 64)))
    return np.asarray(canvas).copy()


def _pattern(pattern: str, size: int) -> np.ndarray:
    """(size, size) float32 brightness factors of a surface pattern, in object coordinates."""
    period = max(4.0, size * _PATTERN_PERIOD_FRACTION)
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    if pattern == "striped":
        return np.where(((u + v) // period) % 2 == 0, 1.0, 0.6).astype(np.float32)
    if pattern == "checkered":
        return np.where((u // period + v // period) % 2 == 0, 1.0, 0.65).astype(np.float32)
    if pattern == "dotted":
        du, dv = u % period - period / 2, v % period - period / 2
        return np.where(du * du + dv * dv < (period / 3.2) ** 2, 1.45, 1.0).astype(np.float32)
    return np.ones((size, size), np.float32)


def _object_sprite(category: Category, obj: PlacedObject, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The rotated object: (h, w, 3) uint8 RGB and (h, w) uint8 part labels (0 = outside)."""
    s = obj.size
    label_img = Image.new("L", (s, s), 0)
    category.family.draw(ImageDraw.Draw(label_img), s)
    labels = np.asarray(label_img)
    n_parts = len(category.family.parts)
    palette = np.zeros((n_parts + 1, 3), np.float32)
    patterned = np.zeros(n_parts + 1, bool)
    for p in range(n_parts):
        palette[p + 1] = category.part_rgb(p)
        patterned[p + 1] = not isinstance(category.family.part_colours[p], tuple)
    rgb = palette[labels]
    factor = np.where(patterned[labels], _pattern(category.pattern, s), 1.0)
    shading = np.linspace(1.08, 0.88, s, dtype=np.float32)[:, None]  # light from above
    rgb = rgb * (factor * shading * obj.brightness)[..., None] + np.asarray(obj.tint, np.float32)
    rgb += rng.normal(0, 3, size=rgb.shape)
    rgb_img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    # NEAREST for both, so the rotated pixels and labels stay in one-to-one correspondence.
    rgb_img = rgb_img.rotate(obj.angle, resample=Image.NEAREST, expand=True)
    label_img = label_img.rotate(obj.angle, resample=Image.NEAREST, expand=True)
    return np.asarray(rgb_img), np.asarray(label_img)


def _paste(
    image: np.ndarray,
    instance: np.ndarray,
    parts: np.ndarray,
    rgb: np.ndarray,
    labels: np.ndarray,
    centre: tuple[float, float],
    instance_id: int,
) -> None:
    """Paints a sprite centred at `centre` over the scene arrays (in place), clipped to the image."""
    r = image.shape[0]
    h, w = labels.shape
    x0, y0 = int(round(centre[0] - w / 2)), int(round(centre[1] - h / 2))
    sx0, sy0 = max(0, -x0), max(0, -y0)
    dx0, dy0 = max(0, x0), max(0, y0)
    dx1, dy1 = min(r, x0 + w), min(r, y0 + h)
    if dx1 <= dx0 or dy1 <= dy0:
        return
    crop = (slice(sy0, sy0 + dy1 - dy0), slice(sx0, sx0 + dx1 - dx0))
    target = (slice(dy0, dy1), slice(dx0, dx1))
    inside = labels[crop] > 0
    image[target][inside] = rgb[crop][inside]
    instance[target][inside] = instance_id
    parts[target][inside] = labels[crop][inside]
