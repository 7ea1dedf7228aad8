"""The synthetic world's object categories: shape families, their named parts, appearances.

A category is a shape family (which fixes the parts and their geometry) crossed with an
appearance (a colour word and a surface pattern). Two categories of the same family differ
only in appearance, so a few-shot model has to read the support to tell them apart.

Each family draws itself on a unit square with one integer label per part, in painter's order
(later parts cover earlier ones). Coordinates are fractions of the object's box.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from PIL import ImageDraw

RGB = tuple[int, int, int]

COLOURS: dict[str, RGB] = {
    "red": (200, 40, 40),
    "orange": (235, 130, 30),
    "yellow": (225, 200, 40),
    "green": (50, 160, 60),
    "teal": (30, 150, 150),
    "blue": (45, 80, 200),
    "purple": (130, 60, 170),
    "pink": (230, 110, 170),
}
PATTERNS = ("plain", "striped", "dotted", "checkered")

# Fixed colours of parts that do not take the category's colour.
_DARK: RGB = (35, 35, 40)
_GLASS: RGB = (170, 205, 225)
_WOOD: RGB = (115, 78, 45)
_CREAM: RGB = (235, 222, 195)
_LEAF: RGB = (60, 140, 55)
_GOLD: RGB = (240, 195, 40)


def _scaled(box: tuple[float, ...], size: int) -> list[float]:
    return [c * (size - 1) for c in box]


def _rect(draw: ImageDraw.ImageDraw, size: int, box, label: int) -> None:
    draw.rectangle(_scaled(box, size), fill=label)


def _ellipse(draw: ImageDraw.ImageDraw, size: int, box, label: int) -> None:
    draw.ellipse(_scaled(box, size), fill=label)


def _circle(draw: ImageDraw.ImageDraw, size: int, cx: float, cy: float, r: float, label: int) -> None:
    _ellipse(draw, size, (cx - r, cy - r, cx + r, cy + r), label)


def _polygon(draw: ImageDraw.ImageDraw, size: int, points, label: int) -> None:
    draw.polygon([(x * (size - 1), y * (size - 1)) for x, y in points], fill=label)


def _draw_mushroom(d, s):
    _rect(d, s, (0.38, 0.42, 0.62, 0.96), 2)  # stem
    d.pieslice(_scaled((0.05, 0.1, 0.95, 0.8), s), 180, 360, fill=1)  # cap


def _draw_house(d, s):
    _rect(d, s, (0.15, 0.45, 0.85, 0.97), 1)  # wall
    _polygon(d, s, [(0.03, 0.48), (0.5, 0.05), (0.97, 0.48)], 2)  # roof
    _rect(d, s, (0.42, 0.66, 0.6, 0.97), 3)  # door


def _draw_tree(d, s):
    _rect(d, s, (0.4, 0.55, 0.6, 0.98), 2)  # trunk
    _ellipse(d, s, (0.1, 0.03, 0.9, 0.68), 1)  # crown


def _draw_car(d, s):
    _polygon(d, s, [(0.2, 0.45), (0.32, 0.16), (0.72, 0.16), (0.84, 0.45)], 1)  # cabin (body)
    d.rounded_rectangle(_scaled((0.03, 0.4, 0.97, 0.8), s), radius=0.08 * s, fill=1)  # body
    _polygon(d, s, [(0.3, 0.42), (0.37, 0.23), (0.67, 0.23), (0.75, 0.42)], 2)  # window
    _circle(d, s, 0.26, 0.8, 0.14, 3)  # wheels
    _circle(d, s, 0.74, 0.8, 0.14, 3)


def _draw_fish(d, s):
    _polygon(d, s, [(0.02, 0.18), (0.32, 0.5), (0.02, 0.82)], 2)  # tail
    _ellipse(d, s, (0.2, 0.22, 0.97, 0.78), 1)  # body
    _circle(d, s, 0.76, 0.42, 0.07, 3)  # eye


def _draw_rocket(d, s):
    _polygon(d, s, [(0.34, 0.6), (0.12, 0.97), (0.34, 0.86)], 3)  # fins
    _polygon(d, s, [(0.66, 0.6), (0.88, 0.97), (0.66, 0.86)], 3)
    _rect(d, s, (0.34, 0.3, 0.66, 0.9), 1)  # body
    _polygon(d, s, [(0.34, 0.31), (0.5, 0.02), (0.66, 0.31)], 2)  # nose
    _circle(d, s, 0.5, 0.5, 0.09, 4)  # window


def _draw_flower(d, s):
    _rect(d, s, (0.46, 0.45, 0.54, 0.99), 3)  # stem
    for k in range(6):
        a = k * math.pi / 3
        _circle(d, s, 0.5 + 0.21 * math.cos(a), 0.36 + 0.21 * math.sin(a), 0.15, 1)  # petals
    _circle(d, s, 0.5, 0.36, 0.12, 2)  # centre


def _draw_robot(d, s):
    _rect(d, s, (0.1, 0.32, 0.27, 0.6), 4)  # arms
    _rect(d, s, (0.73, 0.32, 0.9, 0.6), 4)
    _rect(d, s, (0.32, 0.64, 0.46, 0.98), 3)  # legs
    _rect(d, s, (0.54, 0.64, 0.68, 0.98), 3)
    _rect(d, s, (0.28, 0.3, 0.72, 0.66), 2)  # torso
    d.rounded_rectangle(_scaled((0.35, 0.03, 0.65, 0.28), s), radius=0.05 * s, fill=1)  # head


@dataclass(frozen=True)
class ShapeFamily:
    """A family of objects sharing geometry and parts.

    Attributes:
        name: the caption word, e.g. "mushroom".
        parts: part names; part i (0-based) is drawn with label i + 1.
        part_colours: per part, a fixed RGB or None to take the category's colour; a float
            darkens (< 1) or lightens (> 1) the category's colour instead.
        draw: draws the part labels on an 'L' image of the given square size.
    """

    name: str
    parts: tuple[str, ...]
    part_colours: tuple[RGB | float | None, ...]
    draw: Callable[[ImageDraw.ImageDraw, int], None]


FAMILIES: tuple[ShapeFamily, ...] = (
    ShapeFamily("mushroom", ("cap", "stem"), (None, _CREAM), _draw_mushroom),
    ShapeFamily("house", ("wall", "roof", "door"), (None, 0.55, _WOOD), _draw_house),
    ShapeFamily("tree", ("crown", "trunk"), (None, _WOOD), _draw_tree),
    ShapeFamily("car", ("body", "window", "wheel"), (None, _GLASS, _DARK), _draw_car),
    ShapeFamily("fish", ("body", "tail", "eye"), (None, 0.6, _DARK), _draw_fish),
    ShapeFamily("rocket", ("body", "nose", "fin", "window"), (1.45, None, 0.6, _GLASS), _draw_rocket),
    ShapeFamily("flower", ("petal", "centre", "stem"), (None, _GOLD, _LEAF), _draw_flower),
    ShapeFamily("robot", ("head", "torso", "leg", "arm"), (1.4, None, 0.55, 0.8), _draw_robot),
)

APPEARANCES_PER_FAMILY = 3


@dataclass(frozen=True)
class Category:
    """One object category: a family in one appearance. `index` is its id in `CATEGORIES`."""

    index: int
    family: ShapeFamily
    colour: str
    pattern: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.pattern} {self.family.name}"

    @property
    def slug(self) -> str:
        """A file-system-safe name, e.g. "red_striped_mushroom"."""
        return self.name.replace(" ", "_")

    def part_rgb(self, part: int) -> RGB:
        """The RGB of part `part` (0-based) before per-object colour jitter."""
        spec = self.family.part_colours[part]
        base = COLOURS[self.colour]
        if spec is None:
            return base
        if isinstance(spec, float):
            return tuple(int(min(255, c * spec)) if spec < 1 else int(c + (255 - c) * (spec - 1)) for c in base)
        return spec


def _build_categories() -> tuple[Category, ...]:
    colours = list(COLOURS)
    categories = []
    # Category id = appearance * n_families + family, so the interleaved folds (id mod 4)
    # mix families and appearances.
    for appearance in range(APPEARANCES_PER_FAMILY):
        for f, family in enumerate(FAMILIES):
            colour = colours[(3 * f + 5 * appearance) % len(colours)]
            pattern = PATTERNS[(f + appearance) % len(PATTERNS)]
            categories.append(Category(len(categories), family, colour, pattern))
    return tuple(categories)


CATEGORIES: tuple[Category, ...] = _build_categories()
NUM_CATEGORIES = len(CATEGORIES)


def appearance_variants(families: tuple[ShapeFamily, ...]) -> tuple[Category, ...]:
    """Every (family, colour, pattern) combination of `families`, indexed in that order.

    Few-shot training on these instead of the 24 fixed categories gives many more classes
    (32 per family), so a model cannot memorise a handful of classes and must read the support.
    """
    variants = []
    for family in families:
        for colour in COLOURS:
            for pattern in PATTERNS:
                variants.append(Category(len(variants), family, colour, pattern))
    return tuple(variants)
