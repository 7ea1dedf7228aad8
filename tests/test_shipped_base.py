"""The embedded synth base: loads with diffusers alone, runs, and round-trips masks through its VAE."""

from __future__ import annotations

import json

import numpy as np
import torch

from modeling.presets import SYNTH_BASE_DIR, build_model
from segdata.world import SyntheticWorld
from train.base_eval import EVAL_SPLIT, reconstruction_figures


def test_shipped_folder_is_small_and_pickle_free():
    files = [p for p in SYNTH_BASE_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 30 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)


def test_diffusers_from_pretrained_loads_it_and_the_unet_runs():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(SYNTH_BASE_DIR, torch_dtype=torch.float32, local_files_only=True)
    ids = pipe.tokenizer(["a red plain mushroom"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        context = pipe.text_encoder(ids)[0]
        z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        out = pipe.unet(z, 500, context).sample
    assert context.shape == (1, 77, pipe.unet.config.cross_attention_dim)
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert pipe.unet.dtype == torch.float32


def test_the_text_conditions_the_unet():
    m = build_model("synth")
    ids = m.tokenizer(
        ["a red plain mushroom", "a blue dotted car"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = m.unet(z, 500, m.text_encoder(ids)[0]).sample
    assert (out[0] - out[1]).abs().mean() > 1e-3


def test_vae_round_trips_held_out_masks():
    m = build_model("synth")
    figures = reconstruction_figures(m.vae, SyntheticWorld(resolution=128, seed=0), 24)
    assert figures["mask_iou_mean"] >= 0.95, figures
    assert figures["scene_psnr_db"] > 18, figures


def test_recorded_metrics_meet_the_bar():
    metrics = json.loads((SYNTH_BASE_DIR / "metrics.json").read_text())
    assert metrics["figures"]["mask_iou_mean"] >= 0.95 and metrics["figures"]["scene_psnr_db"] > 18
    assert (SYNTH_BASE_DIR / "samples.png").exists()


def test_evaluation_scenes_are_not_training_scenes():
    from train.base_ldm import LDM_SPLIT
    from train.base_vae import VAE_SPLIT

    assert len({EVAL_SPLIT, LDM_SPLIT, VAE_SPLIT, VAE_SPLIT + 100}) == 4
    assert not np.array_equal(
        SyntheticWorld(128, 0).scene((EVAL_SPLIT, 0, 0)).image, SyntheticWorld(128, 0).scene((LDM_SPLIT, 0, 0)).image
    )
