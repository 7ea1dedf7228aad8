"""Folds, few-shot pools and the episode sampler."""

from __future__ import annotations

import numpy as np
import pytest

from segdata.categories import NUM_CATEGORIES
from segdata.episodes import EpisodeSampler
from segdata.folds import NUM_FOLDS, held_out_categories, training_categories
from segdata.synthetic import SyntheticFewShot, SyntheticParts


def test_folds_are_disjoint_and_cover_every_category():
    held_out = [set(held_out_categories(f)) for f in range(NUM_FOLDS)]
    for f in range(NUM_FOLDS):
        assert held_out[f].isdisjoint(training_categories(f))
        assert held_out[f] | set(training_categories(f)) == set(range(NUM_CATEGORIES))
        for g in range(f + 1, NUM_FOLDS):
            assert held_out[f].isdisjoint(held_out[g])
    assert set().union(*held_out) == set(range(NUM_CATEGORIES))
    assert held_out_categories(1) == tuple(range(1, NUM_CATEGORIES, 4))  # COCO-20i interleaving


def test_bad_fold_is_refused():
    with pytest.raises(ValueError, match="fold must be in 0..3"):
        held_out_categories(4)


@pytest.fixture(scope="module")
def trn(world):
    return SyntheticFewShot(world, fold=1, split="trn", size=120)


@pytest.fixture(scope="module")
def val(world):
    return SyntheticFewShot(world, fold=1, split="val", size=160)


def test_training_pool_never_shows_a_held_out_category(trn):
    held_out = {c + 1 for c in held_out_categories(1)}
    for i in range(trn.size):
        _, labels = trn.load(i)
        assert held_out.isdisjoint(np.unique(labels))


def test_class_lists_hold_exactly_the_images_showing_the_class(val):
    for c in val.categories:
        for i in val.images_of(c):
            assert (val.load(i)[1] == c + 1).sum() >= val.world.min_visible_pixels
    for i in range(val.size):
        for c in val.scene(i).categories_present & set(val.categories):
            assert i in val.images_of(c)


@pytest.mark.parametrize("shots", [1, 3, 5])
def test_episodes_follow_the_sampling_rules(val, shots):
    sampler = EpisodeSampler(val, shots)
    rng = np.random.default_rng(0)
    for _ in range(25):
        ep = sampler.sample(rng)
        assert ep.category in held_out_categories(1)
        assert ep.query_id not in ep.support_ids
        assert len(set(ep.support_ids)) == shots == ep.shots
        assert ep.query_id in val.images_of(ep.category)
        assert all(i in val.images_of(ep.category) for i in ep.support_ids)
        assert np.stack(ep.support_images).shape == (shots, 64, 64, 3)
        assert np.stack(ep.support_masks).shape == (shots, 64, 64)
        assert set(np.unique(ep.query_mask)) <= {0, 1} and ep.query_mask.any()
        assert all(m.any() for m in ep.support_masks)
        np.testing.assert_array_equal(ep.query_mask, val.load(ep.query_id)[1] == ep.category + 1)


def test_fixed_episodes_repeat_with_their_seed(val):
    sampler = EpisodeSampler(val, 1)
    first = [(e.category, e.query_id, e.support_ids) for e in sampler.fixed_episodes(10, seed=0)]
    again = [(e.category, e.query_id, e.support_ids) for e in sampler.fixed_episodes(10, seed=0)]
    other = [(e.category, e.query_id, e.support_ids) for e in sampler.fixed_episodes(10, seed=1)]
    assert first == again and first != other


def test_sampler_refuses_impossible_shot_counts(val):
    with pytest.raises(ValueError, match="at least 1"):
        EpisodeSampler(val, 0)
    with pytest.raises(ValueError, match="images a 500-shot episode needs"):
        EpisodeSampler(val, 500)


def test_part_data_labels_name_background_then_parts(world):
    parts = SyntheticParts(world, category=5, split="train", size=3)
    assert parts.class_names[0] == "background" and len(parts.class_names) == 1 + 4  # rocket
    image, labels = parts[0]
    assert image.shape == (64, 64, 3) and labels.shape == (64, 64)
    assert labels.max() < len(parts.class_names)
    other = SyntheticParts(world, category=5, split="test", size=3)
    assert not np.array_equal(other[0][0], image)
    with pytest.raises(IndexError):
        parts[3]


def test_variant_pool_has_many_classes_and_no_held_out_family(world):
    from segdata.categories import CATEGORIES
    from segdata.synthetic import SyntheticVariantFewShot

    pool = SyntheticVariantFewShot(world, fold=1, size=60)
    table = pool.world.categories
    held_out_families = {CATEGORIES[c].family.name for c in held_out_categories(1)}
    assert len(table) == 6 * 8 * 4 and not {c.family.name for c in table} & held_out_families
    assert len({(c.family.name, c.colour, c.pattern) for c in table}) == len(table)
    for i in range(10):
        scene = pool.scene(i)
        assert {table[o.category].family.name for o in scene.objects}.isdisjoint(held_out_families)
        image, labels = pool.load(i)
        for c in scene.categories_present:
            assert i in pool.images_of(c) and (labels == c + 1).any()
    again = SyntheticVariantFewShot(world, fold=1, size=60)  # deterministic by world seed and key
    np.testing.assert_array_equal(again.load(3)[0], pool.load(3)[0])
    assert not np.array_equal(pool.load(3)[0], SyntheticFewShot(world, fold=1, split="trn", size=60).load(3)[0])
    assert EpisodeSampler(pool, 1).sample(np.random.default_rng(0)).category in pool.categories
