"""Shared fixtures: a small synthetic world, the tiny-random model and its engines, built once per session."""

from __future__ import annotations

import pytest

from segdata.world import SyntheticWorld

# A test that uses one of these (each builds engines or trains a model) is in the slow lane;
# `pytest -m "not slow"` is the fast lane, the README command runs both.
SLOW_FIXTURES = {
    "selected_engines",
    "built",
    "shipped_engines",
    "batched_engines",
    "slime_engines",
    "tiny_with_decoder",
    "segmenters",
    "trained",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def world() -> SyntheticWorld:
    return SyntheticWorld(resolution=64, seed=123)


@pytest.fixture(scope="session")
def tiny_model():
    from modeling.presets import build_model

    return build_model("tiny-random", seed=0)


TINY_MAX_SHOTS = 3


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """(model folder, engine directory) of a tiny-random DiffewS model, built once for the session.

    With the released code's rule "all", so its query graph takes every shot up to TINY_MAX_SHOTS
    (the default rule would reduce 2 and 3 shots to the 1 shot this untrained model records).
    """
    import torch

    from export.diffews_build import build_diffews
    from modeling.diffews import DiffewsModel
    from modeling.diffews_folder import save_diffews
    from modeling.presets import build_model

    root = tmp_path_factory.mktemp("engine")
    torch.manual_seed(0)
    folder = save_diffews(DiffewsModel.from_base(build_model("tiny-random")), root / "model", {"base": "tiny-random"})
    engines = root / "engines"
    build_diffews(engines, model=folder, max_shots=TINY_MAX_SHOTS, max_side=512, selection="all")
    return folder, engines


@pytest.fixture(scope="session")
def shipped_engines(tmp_path_factory):
    """Engines of the shipped synth DiffewS model (128 px), up to 2 shots: real masks, not random-weight ones."""
    from export.diffews_build import build_diffews

    engines = tmp_path_factory.mktemp("shipped") / "engines"
    return build_diffews(engines, max_shots=2, parity_episodes=1, max_side=512)


BATCHED_MAX_QUERIES = 3


@pytest.fixture(scope="session")
def batched_engines(tmp_path_factory):
    """Engines of the shipped synth DiffewS model with the batched query graph (1 to 3 queries per run)."""
    from export.diffews_build import build_diffews

    engines = tmp_path_factory.mktemp("batched") / "engines"
    return build_diffews(engines, max_shots=2, parity_episodes=1, max_side=512, query_batch=BATCHED_MAX_QUERIES)


@pytest.fixture(scope="session")
def episodes():
    """Four held-out 2-shot episodes of the 64 px world (fold 0), at 64 x 64."""
    from segdata.episodes import EpisodeSampler
    from segdata.synthetic import SyntheticFewShot

    source = SyntheticFewShot(SyntheticWorld(resolution=64, seed=0), fold=0, split="val", size=120)
    return list(EpisodeSampler(source, 2).fixed_episodes(4, seed=5))


SLIME_PART_NAMES = ["background", "head", "body", "tail"]


@pytest.fixture(scope="session")
def slime_engines(tmp_path_factory):
    """(embedding file, engine directory): tiny-random embeddings with perturbed rows, 2 x 2 patches of 48 px."""
    import torch

    from export.slime_build import build_slime
    from modeling.presets import build_model
    from modeling.slime import SlimeModel
    from modeling.slime_embedding import SlimeEmbedding, weights_hash

    root = tmp_path_factory.mktemp("slime")
    components = build_model("tiny-random")
    model = SlimeModel.from_base(components, SLIME_PART_NAMES)
    with torch.no_grad():
        model.learned.add_(torch.randn(model.learned.shape, generator=torch.Generator().manual_seed(0)))
    path = SlimeEmbedding.from_model(
        model, SLIME_PART_NAMES, "tiny-random", weights_hash(components.unet, components.vae), {}
    ).save(root / "emb.safetensors")
    engines = root / "engines"
    build_slime(engines, embedding=path, patches_per_side=2, patch_size=48, max_side=512)
    return path, engines
