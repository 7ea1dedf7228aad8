"""Shared fixtures: a small synthetic world, the tiny-random model and its engines, built once per session."""

from __future__ import annotations

import pytest

from segdata.world import SyntheticWorld


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
    """(model folder, engine directory) of a tiny-random DiffewS model, built once for the session."""
    import torch

    from export import build_engine
    from modeling.diffews import DiffewsModel
    from modeling.diffews_folder import save_diffews
    from modeling.presets import build_model

    root = tmp_path_factory.mktemp("engine")
    torch.manual_seed(0)
    folder = save_diffews(DiffewsModel.from_base(build_model("tiny-random")), root / "model", {"base": "tiny-random"})
    engines = root / "engines"
    build_engine.main(
        ["--model", str(folder), "--out", str(engines), "--max-shots", str(TINY_MAX_SHOTS), "--max-side", "512"]
    )
    return folder, engines


@pytest.fixture(scope="session")
def shipped_engines(tmp_path_factory):
    """Engines of the shipped synth DiffewS model (128 px), up to 2 shots: real masks, not random-weight ones."""
    from export import build_engine

    engines = tmp_path_factory.mktemp("shipped") / "engines"
    build_engine.main(["--out", str(engines), "--max-shots", "2", "--parity-episodes", "1", "--max-side", "512"])
    return engines
