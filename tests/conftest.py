"""Shared fixtures: a small synthetic world and the tiny-random model, built once per session."""

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
