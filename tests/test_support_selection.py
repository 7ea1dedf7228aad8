"""Support-token selection: each rule keeps the budget, spreads or favours as it says, and is a pure function."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.support_selection import (
    RULES,
    SupportSelection,
    foreground_cells,
    layer_grid,
    splitmix64,
    spread_rank,
)


def masks(shots: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """A rectangle of foreground per shot, at a place and size of its own."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(shots):
        m = np.zeros((size, size + 8), np.uint8)
        top, left = rng.integers(0, size // 2, 2)
        m[top : top + size // 4, left : left + size // 3] = 1
        out.append(m)
    return out


def test_splitmix64_is_the_reference_generator():
    # SplitMix64 seeded with 0: its first outputs are the mix of 1 x, 2 x, ... the golden gamma
    state = np.array([0, 0x9E3779B97F4A7C15], np.uint64)
    assert splitmix64(state).tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_spread_rank_is_a_permutation_whose_prefixes_cover_the_grid():
    rank = spread_rank(8, 8).reshape(8, 8)
    assert sorted(rank.ravel().tolist()) == list(range(64))
    first = rank < 16  # the first quarter of the order: one cell in every 2 x 2 block
    assert (first.reshape(4, 2, 4, 2).sum(axis=(1, 3)) == 1).all()
    assert len(set(spread_rank(6, 6).tolist())) == 36  # not a power of two: distinct ranks, not 0..35


@pytest.mark.parametrize("rule", ["uniform", "stratified", "foreground"])
@pytest.mark.parametrize("shots", [3, 5, 10])
def test_every_rule_keeps_the_trained_token_count(rule, shots):
    selection = SupportSelection(rule, budget_shots=2)
    keep = selection.indices(masks(shots), (16, 16))
    assert keep.shape == (2 * 256,) and len(set(keep.tolist())) == 512
    assert (np.diff(keep) > 0).all() and keep.min() >= 0 and keep.max() < shots * 256
    again = selection.indices(masks(shots), (16, 16))
    assert np.array_equal(keep, again)  # a pure function of the masks and the rule


def test_a_bank_within_the_budget_is_kept_whole_and_all_keeps_everything():
    for rule in RULES:
        assert len(SupportSelection(rule, 2).indices(masks(2), (8, 8))) == 128
    assert len(SupportSelection("all", 2).indices(masks(10), (8, 8))) == 640
    assert SupportSelection("all", 2).bank_shots(10) == 10
    assert SupportSelection("stratified", 2).bank_shots(10) == 2


def test_stratified_keeps_every_region_of_every_shot():
    keep = SupportSelection("stratified", 2).indices(masks(5), (16, 16))
    per_shot = np.bincount(keep // 256, minlength=5)
    assert per_shot.max() - per_shot.min() <= 1
    for shot in range(5):
        cells = keep[keep // 256 == shot] % 256
        covered = np.zeros((16, 16), bool)
        covered.ravel()[cells] = True
        assert covered.reshape(4, 4, 4, 4).any(axis=(1, 3)).all()  # every 4 x 4 region has a kept token


def test_uniform_depends_on_its_seed_and_not_on_the_masks():
    a = SupportSelection("uniform", 2, seed=0).indices(masks(5, seed=1), (16, 16))
    b = SupportSelection("uniform", 2, seed=0).indices(masks(5, seed=2), (16, 16))
    c = SupportSelection("uniform", 2, seed=1).indices(masks(5, seed=1), (16, 16))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_foreground_keeps_foreground_first_up_to_its_share():
    shots = masks(5)
    fore = np.concatenate([foreground_cells(m, 16, 16) for m in shots])
    keep = SupportSelection("foreground", 2, foreground_share=0.5).indices(shots, (16, 16))
    assert fore[keep].sum() == min(fore.sum(), 256)  # every foreground cell, up to half the budget
    stratified = SupportSelection("stratified", 2).indices(shots, (16, 16))
    assert fore[keep].sum() > fore[stratified].sum()
    # all foreground: the budget is filled with foreground when there is too little background
    full = [np.ones((32, 32), np.uint8)] * 3
    assert len(SupportSelection("foreground", 1).indices(full, (4, 4))) == 16


def test_foreground_cells_count_pixels_and_fall_back_to_the_nearest_pixel():
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 1
    mask[2, 2] = 1  # one pixel of four: less than half
    assert foreground_cells(mask, 2, 2).tolist() == [True, False, False, False]
    tiny = np.array([[1, 0], [0, 0]], np.uint8)  # fewer pixels than cells
    assert foreground_cells(tiny, 4, 4).reshape(4, 4)[:2, :2].all()
    assert not foreground_cells(tiny, 4, 4).reshape(4, 4)[2:, 2:].any()


def test_reduce_lays_the_kept_tokens_out_as_budget_shots():
    rng = np.random.default_rng(0)
    bank = {"key_00": rng.random((5, 64, 4), dtype=np.float32), "key_01": rng.random((5, 16, 4), dtype=np.float32)}
    grids = {name: layer_grid(array.shape[1]) for name, array in bank.items()}
    selection = SupportSelection("stratified", 2)
    reduced = selection.reduce(bank, masks(5), grids)
    assert reduced["key_00"].shape == (2, 64, 4) and reduced["key_01"].shape == (2, 16, 4)
    keep = selection.indices(masks(5), (8, 8))
    assert np.array_equal(reduced["key_00"].reshape(-1, 4), bank["key_00"].reshape(-1, 4)[keep])
    with pytest.raises(ValueError, match="5 shots but 4 masks"):
        selection.reduce(bank, masks(4), grids)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"rule": "random"}, "rule must be one of"),
        ({"budget_shots": 0}, "positive number of shots"),
        ({"foreground_share": 1.5}, r"foreground_share must lie in \[0, 1\]"),
        ({"seed": 2**32}, r"seed must lie in \[0, 2\*\*32\)"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        SupportSelection(**{"rule": "foreground", "budget_shots": 2, **settings})


def test_json_round_trip_and_the_released_default():
    selection = SupportSelection("foreground", 2, seed=7, foreground_share=0.4)
    assert SupportSelection.from_json(selection.to_json()) == selection
    assert SupportSelection.from_json(None) == SupportSelection("all", 1)


# ---------------------------------------------------------------- on engines: runtime, PyTorch, bank files


@pytest.fixture(scope="module")
def selected_engines(built, tmp_path_factory):
    """The tiny-random model's engines with the foreground rule: up to 5 shots reduced to 2 shots' tokens."""
    from export.diffews_build import build_diffews

    folder, _ = built
    out = tmp_path_factory.mktemp("selected") / "engines"
    build_diffews(out, model=folder, max_shots=5, max_side=512, parity_episodes=1, selection="foreground",
                  selection_budget=2)  # fmt: skip
    return folder, out


def five_shots(episodes):
    """5 supports from the held-out episodes (2 each), and a query."""
    images = [im for ep in episodes for im in ep.support_images][:5]
    shot_masks = [m for ep in episodes for m in ep.support_masks][:5]
    return images, shot_masks, episodes[0].query_image


def test_new_engines_reduce_by_the_measured_rule_to_the_trained_shots(shipped_engines):
    from runtime.manifest import Manifest

    # stratified: docs/diffews.md's measurements; 2: the shipped model's training.max_shots
    assert Manifest.read(shipped_engines).diffews.selection == SupportSelection("stratified", 2)


def test_engines_record_the_rule_and_bound_the_query_graph(selected_engines):
    from runtime.manifest import Manifest
    from runtime.sections import QUERY_SEGMENTER

    manifest = Manifest.read(selected_engines[1])
    assert manifest.diffews.selection == SupportSelection("foreground", 2)
    assert manifest.rules["shots"]["max"] == 5
    bank_input = manifest.graph(QUERY_SEGMENTER).spec.inputs[2]
    assert bank_input.shape[0] == "shots" and bank_input.max_shape[0] == 2  # its cost no longer grows with shots


def test_the_runtime_reduces_five_shots_to_the_rules_tokens(selected_engines, episodes):
    from runtime.fewshot import FewShotSegmenter
    from runtime.images import load_mask

    segmenter = FewShotSegmenter.from_dir(selected_engines[1], backend="onnxruntime")
    images, shot_masks, query = five_shots(episodes)
    bank = segmenter.encode_support(images, shot_masks)
    assert bank.shots == 5 and bank.bank_shots == 2
    whole = [segmenter.encode_shot(im, m) for im, m in zip(images, shot_masks)]
    full = {n: np.concatenate([w[n] for w in whole]) for n in segmenter.bank_names}
    read_masks = [load_mask(m) for m in shot_masks]
    expected = segmenter.selection.reduce(full, read_masks, segmenter.manifest.diffews.bank_grids)
    assert all(np.array_equal(bank.arrays[n], expected[n]) for n in segmenter.bank_names)
    two = segmenter.encode_support(images[:2], shot_masks[:2])  # within the budget: every token
    assert two.bank_shots == 2 and np.array_equal(two.arrays["key_00"], full["key_00"][:2])
    mask = segmenter.segment(query, support=bank)
    assert mask.shape == query.shape[:2]


def test_pytorch_keeps_the_same_tokens_and_gives_the_runtimes_mask(selected_engines, episodes):
    from modeling.predictor import TorchFewShotSegmenter
    from runtime.fewshot import FewShotSegmenter
    from segdata.metrics import mask_iou

    folder, engines = selected_engines
    runtime = FewShotSegmenter.from_dir(engines, backend="onnxruntime")
    torch_seg = TorchFewShotSegmenter.from_folder(folder, selection=runtime.selection)
    images, shot_masks, query = five_shots(episodes)
    runtime.set_support(images, shot_masks)
    torch_seg.set_support(images, shot_masks)
    assert torch_seg.shots == runtime.shots == 5
    for name, key in zip(torch_seg.model.fusion.layer_names, runtime.bank_names):  # the keys, layer by layer
        got = torch_seg.bank.keys[name].numpy().reshape(runtime.bank[key].shape)
        want = runtime.bank[key]
        assert np.linalg.norm(got - want) <= 1e-3 * np.linalg.norm(want)  # the export's parity tolerance
    assert mask_iou(runtime.segment(query), torch_seg.segment(query)) >= 0.98


def test_a_saved_bank_records_its_reduction_and_loads_whole(selected_engines, episodes, tmp_path):
    from runtime.bank_files import read_bank_file, write_bank_file
    from runtime.fewshot import FewShotSegmenter

    segmenter = FewShotSegmenter.from_dir(selected_engines[1], backend="onnxruntime")
    images, shot_masks, query = five_shots(episodes)
    segmenter.set_support(images, shot_masks)
    path = segmenter.save_support(tmp_path / "bank.npz")
    _, meta = read_bank_file(path, segmenter.manifest.model["hash"])
    assert meta["support_shots"] == "5" and meta["selection"] == "foreground, budget 2 shots, foreground share 0.5"
    loaded = segmenter.read_support(path)
    assert loaded.shots == 5 and loaded.bank_shots == 2 and loaded.selection == meta["selection"]
    assert np.array_equal(segmenter.segment(query, support=loaded), segmenter.segment(query))
    # A bank within the budget keeps every token and says so, whatever the engines' rule.
    segmenter.set_support(images[:2], shot_masks[:2])
    _, meta = read_bank_file(segmenter.save_support(tmp_path / "two.npz"), segmenter.manifest.model["hash"])
    assert meta["support_shots"] == "2" and meta["selection"] == "all"
    # A loaded bank is saved again with its own record, not the engines' rule.
    other = {"support_shots": "7", "selection": "uniform, budget 2 shots, seed 3"}
    write_bank_file(tmp_path / "other.npz", loaded.arrays, segmenter.manifest.model["hash"], meta=other)
    segmenter.load_support(tmp_path / "other.npz")
    _, meta = read_bank_file(segmenter.save_support(tmp_path / "again.npz"), segmenter.manifest.model["hash"])
    assert meta["support_shots"] == "7" and meta["selection"] == other["selection"]


def test_the_server_keeps_the_runtimes_tokens_and_its_store_the_reduction(selected_engines, episodes, tmp_path):
    """register_support reduces as set_support does; a replica reading the bank store gets the same bank and record."""
    from runtime.fewshot import FewShotSegmenter
    from runtime.serve.bank_cache import BankCache
    from runtime.serve.bank_store import BankStore
    from runtime.serve.service import FewShotService

    segmenter = FewShotSegmenter.from_dir(selected_engines[1], backend="onnxruntime")
    images, shot_masks, query = five_shots(episodes)
    expected = segmenter.encode_support(images, shot_masks)
    model_hash = segmenter.manifest.model["hash"]
    first = FewShotService(segmenter, BankCache(2**30), BankStore(tmp_path, model_hash))
    key = first.register(images, shot_masks)
    second = FewShotService(segmenter, BankCache(2**30), BankStore(tmp_path, model_hash))
    stored = second.support(key)
    assert second.counts["store_reads"] == 1
    assert (stored.shots, stored.bank_shots, stored.selection) == (5, 2, expected.selection)
    assert all(np.array_equal(stored.arrays[n], expected.arrays[n]) for n in segmenter.bank_names)
    assert np.array_equal(second.segment(key, query), segmenter.segment(query, support=expected))
