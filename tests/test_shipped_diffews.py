"""The shipped DiffewS model: loads, is small, and segments held-out categories far better than trivial baselines."""

from __future__ import annotations

import json

from modeling.diffews_folder import load_diffews, read_config
from modeling.presets import PRETRAINED_DIR
from segdata.folds import held_out_categories
from segdata.synthetic import SyntheticFewShot
from segdata.world import SyntheticWorld
from train.evaluate import run_evaluation

SHIPPED = PRETRAINED_DIR / "synth-diffews"


def test_shipped_folder_is_complete_and_small():
    config = read_config(SHIPPED)
    assert config["base"] == "synth" and config["data"]["source"] == "synth-variants"
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size < 30 * 2**20


def test_shipped_model_beats_baselines_on_held_out_categories():
    model = load_diffews(SHIPPED)
    fold = read_config(SHIPPED)["data"]["fold"]
    world = SyntheticWorld(resolution=model.resolution, seed=0)
    source = SyntheticFewShot(world, fold=fold, split="val", size=300)
    assert set(source.categories) == set(held_out_categories(fold))
    rows = {r["method"]: r for r in run_evaluation(model, source, [1], episodes=48, seed=1, batch=16)}
    best_baseline = max(rows["all foreground"]["miou"], rows["paste support"]["miou"])
    # These 48 episodes give 53.3 against 7.6 (+45.8); 1000 episodes give +44.2 (model card). The
    # toolkit's target is +20.
    assert rows["DiffewS"]["miou"] > best_baseline + 20


def test_shipped_evaluation_table_is_recorded():
    result = json.loads((SHIPPED / "evaluation.json").read_text())
    shots = {r["shots"] for r in result["rows"]}
    assert {1, 5} <= shots and all(r["episodes"] == 1000 for r in result["rows"])
