"""The synthetic world: determinism, categories, and masks that match the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from segdata.categories import CATEGORIES, COLOURS, FAMILIES, NUM_CATEGORIES
from segdata.world import SyntheticWorld


def test_at_least_twenty_categories_with_two_to_four_named_parts():
    assert NUM_CATEGORIES >= 20
    assert len({c.name for c in CATEGORIES}) == NUM_CATEGORIES
    for family in FAMILIES:
        assert 2 <= len(family.parts) <= 4
        assert len(family.part_colours) == len(family.parts)


def test_same_seed_and_key_give_identical_scenes(world):
    a, b = world.scene((1, 2, 3)), SyntheticWorld(resolution=64, seed=123).scene((1, 2, 3))
    for field in ("image", "category_mask", "instance_mask", "part_mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.caption == b.caption


def test_other_seed_or_key_gives_another_scene(world):
    base = world.scene((1, 2, 3)).image
    assert not np.array_equal(base, world.scene((1, 2, 4)).image)
    assert not np.array_equal(base, SyntheticWorld(resolution=64, seed=124).scene((1, 2, 3)).image)


def test_scene_arrays_have_documented_shapes_and_dtypes(world):
    scene = world.scene((0, 0, 0))
    assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
    for mask in (scene.category_mask, scene.instance_mask, scene.part_mask):
        assert mask.shape == (64, 64) and mask.dtype == np.uint8


@pytest.mark.parametrize("index", range(12))
def test_masks_agree_with_each_other(world, index):
    scene = world.scene((7, 0, index))
    inside = scene.instance_mask > 0
    np.testing.assert_array_equal(inside, scene.category_mask > 0)
    np.testing.assert_array_equal(inside, scene.part_mask > 0)
    for i, obj in enumerate(scene.objects):
        here = scene.instance_mask == i + 1
        assert here.sum() == scene.visible_pixels[i]
        assert np.all(scene.category_mask[here] == obj.category + 1)
        n_parts = len(CATEGORIES[obj.category].family.parts)
        assert scene.part_mask[here].max(initial=0) <= n_parts


@pytest.mark.parametrize("index", range(8))
def test_unlabelled_pixels_are_exactly_the_background(world, index):
    """Rendering the same texture stream without objects reproduces every pixel labelled 0."""
    layout_rng, texture_rng = world._rngs((7, 1, index))
    scene = world.render(world.sample_layout(layout_rng), texture_rng)
    _, texture_rng = world._rngs((7, 1, index))
    empty = world.render((), texture_rng)
    background = scene.instance_mask == 0
    np.testing.assert_array_equal(scene.image[background], empty.image[background])
    assert not empty.instance_mask.any()


def test_plain_parts_have_their_categorys_colour():
    world = SyntheticWorld(resolution=128, seed=5)
    checked = 0
    for c in [c for c in CATEGORIES if c.pattern == "plain"][:4]:
        scene = world.part_scene((3, c.index), c.index)
        obj = scene.objects[0]
        here = scene.part_mask == 1
        expected = np.asarray(c.part_rgb(0), np.float32) * obj.brightness + np.asarray(obj.tint)
        median = np.median(scene.image[here].astype(np.float32), axis=0)
        assert np.abs(median - np.clip(expected, 0, 255)).max() < 30, (c.name, median, expected)
        checked += 1
    assert checked == 4


def test_caption_names_each_clearly_visible_object(world):
    for index in range(20):
        scene = world.scene((8, 0, index))
        named = [o for o, v in zip(scene.objects, scene.visible_pixels) if v >= world.min_visible_pixels]
        assert scene.caption == " and ".join(f"a {CATEGORIES[o.category].name}" for o in named)
        for obj in named:
            assert CATEGORIES[obj.category].colour in COLOURS
            assert CATEGORIES[obj.category].family.name in scene.caption


def test_allowed_categories_restrict_the_objects(world):
    for index in range(20):
        scene = world.scene((9, 0, index), categories=[3, 7])
        assert {o.category for o in scene.objects} <= {3, 7}


def test_part_scene_shows_one_whole_object():
    world = SyntheticWorld(resolution=128, seed=0)
    for c in range(0, NUM_CATEGORIES, 5):
        scene = world.part_scene((1, c), c)
        assert len(scene.objects) == 1
        labels = set(np.unique(scene.part_mask)) - {0}
        assert labels == set(range(1, len(CATEGORIES[c].family.parts) + 1)), CATEGORIES[c].name
        # fully inside: the object does not touch the border
        assert not scene.instance_mask[[0, -1]].any() and not scene.instance_mask[:, [0, -1]].any()


def test_tiny_resolution_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        SyntheticWorld(resolution=16)
