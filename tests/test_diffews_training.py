"""`python -m train.diffews` on tiny-random: every data layout, resume, no silent overwrite; evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import train.diffews as diffews_cli
from modeling.diffews_folder import UNET_WEIGHTS, load_diffews
from segdata.episodes import EpisodeSampler
from segdata.folds import NUM_FOLDS
from segdata.layouts import write_class_folders, write_coco20i
from segdata.synthetic import SyntheticFewShot
from train.evaluate import IouMeter, all_foreground, paste_support, run_evaluation

FAST = ["--base", "tiny-random", "--episodes", "2", "--grad-accum", "1", "--max-shots", "2", "--lr", "1e-4"]


@pytest.fixture(scope="module")
def coco_root(world, tmp_path_factory):
    """A COCO-20i data set in exactly the HSNet / Matcher layout, written by the synthetic world."""
    root = tmp_path_factory.mktemp("coco20i")
    trn = [SyntheticFewShot(world, fold=f, split="trn", size=16) for f in range(NUM_FOLDS)]
    write_coco20i(root, trn, SyntheticFewShot(world, fold=0, split="val", size=24))
    return root


def test_trains_on_coco20i_layout_and_writes_a_model_folder(coco_root, tmp_path):
    out = tmp_path / "run"
    args = [*FAST, "--data", "coco20i", "--data-root", str(coco_root), "--steps", "3", "--out", str(out)]
    assert diffews_cli.main(args) == 0
    config = json.loads((out / "diffews.json").read_text())
    assert config["base"] == "tiny-random" and config["data"]["source"] == "coco20i"
    assert config["training"]["lr"] == 1e-4 and config["empty_prompt_tokens"] == 77
    weights = load_file(str(out / UNET_WEIGHTS))
    assert weights["conv_in_ref.weight"].shape[1] == 8 and weights["conv_in.weight"].shape[1] == 4
    records = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0 and np.isfinite(records[-1]["loss"])
    load_diffews(out)
    with pytest.raises(SystemExit):  # a finished model is never overwritten silently
        diffews_cli.main(args)
    assert diffews_cli.main([*args, "--overwrite"]) == 0


def test_trains_on_class_folders(world, tmp_path):
    root = tmp_path / "fss"
    write_class_folders(root, SyntheticFewShot(world, fold=1, split="trn", size=30), per_class=3)
    out = tmp_path / "run"
    assert (
        diffews_cli.main([*FAST, "--data", "folders", "--data-root", str(root), "--steps", "1", "--out", str(out)]) == 0
    )
    assert (out / "diffews.json").exists()


def test_resume_after_a_crash_is_bit_exact(tmp_path, monkeypatch):
    base = [*FAST, "--data", "synth", "--pool-size", "60", "--steps", "4", "--checkpoint-every", "2"]
    assert diffews_cli.main([*base, "--out", str(tmp_path / "straight")]) == 0

    real = diffews_cli.episode_latents
    calls = {"n": 0}

    def crash_on_fourth_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(diffews_cli, "episode_latents", crash_on_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        diffews_cli.main([*base, "--out", str(tmp_path / "crashed")])
    monkeypatch.setattr(diffews_cli, "episode_latents", real)
    assert diffews_cli.main([*base, "--out", str(tmp_path / "crashed")]) == 0
    a = load_file(str(tmp_path / "straight" / UNET_WEIGHTS))
    b = load_file(str(tmp_path / "crashed" / UNET_WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_iou_meter_follows_hsnet():
    meter = IouMeter()
    gt = np.zeros((4, 4), bool)
    gt[:2] = True  # 8 foreground pixels
    pred = np.zeros((4, 4), bool)
    pred[:1] = True  # 4 of them
    meter.update(0, pred, gt)
    meter.update(1, np.ones((4, 4), bool), gt)  # fg IoU 0.5, bg IoU 0
    assert meter.class_iou() == {0: 50.0, 1: 50.0}
    # background: class 0 inter 8 union 12, class 1 inter 0 union 8; foreground: inter 4+8, union 8+16
    assert meter.fb_iou() == pytest.approx(100 * (8 / 20 + 12 / 24) / 2)


def test_evaluation_rows_and_baselines(world):
    from modeling.diffews import DiffewsModel
    from modeling.presets import build_model

    model = DiffewsModel.from_base(build_model("tiny-random"))  # injects into the UNet: not the shared fixture
    source = SyntheticFewShot(world, fold=0, split="val", size=60)
    rows = run_evaluation(model, source, [1, 2], episodes=6, batch=4)
    assert [(r["method"], r["shots"]) for r in rows] == [
        (m, s) for s in (1, 2) for m in ("DiffewS", "all foreground", "paste support")
    ]
    again = run_evaluation(model, source, [1], episodes=6, batch=3)  # episodes fixed by the seed, batch-independent
    assert again[0]["miou"] == pytest.approx(rows[0]["miou"], abs=1e-3)
    assert all(0 <= r["miou"] <= 100 and 0 <= r["fb_iou"] <= 100 for r in rows)
    episodes = list(EpisodeSampler(source, 2).fixed_episodes(3))
    assert all_foreground(episodes).all()
    pasted = paste_support(episodes)
    assert np.array_equal(pasted[0], np.mean(episodes[0].support_masks, axis=0) >= 0.5)


def test_a_resumed_run_does_not_log_its_steps_twice(tmp_path):
    from train.loop import LossLog

    log = LossLog(tmp_path / "train.jsonl")
    for step in range(0, 60, 10):  # a run that died after its checkpoint at step 30
        log.write(step, loss=1.0)
    log.drop_from(30)  # the resumed run starts at step 30 and logs it again
    log.write(30, loss=0.5)
    steps = [json.loads(line)["step"] for line in log.path.read_text().splitlines()]
    assert steps == [0, 10, 20, 30]
