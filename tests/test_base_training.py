"""train.base: checkpoints resume to exactly the uninterrupted result; the stages write diffusers folders."""

from __future__ import annotations

import json

import pytest
import torch

import train.base_vae as base_vae
from train.base_ldm import LdmRecipe, train_ldm
from train.base_vae import VaeRecipe, train_vae
from train.checkpoint import load_checkpoint, save_checkpoint
from train.loop import cosine_lr

SMALL_VAE = VaeRecipe(steps=4, batch_size=2, crop=32, checkpoint_every=2)


def _weights(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_checkpoint_round_trip_restores_module_and_optimizer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "ckpt", 7, {"m": model}, opt, extra={"note": 1})
    assert not (tmp_path / "ckpt.tmp").exists()
    restored = torch.nn.Linear(3, 2)
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=1)
    step, extra = load_checkpoint(tmp_path / "ckpt", {"m": restored}, restored_opt)
    assert step == 7 and extra == {"note": 1}
    assert torch.equal(_weights(model), _weights(restored))
    assert restored_opt.param_groups[0]["lr"] == 1e-2
    a, b = opt.state_dict()["state"][0], restored_opt.state_dict()["state"][0]
    assert torch.equal(a["exp_avg"], b["exp_avg"]) and float(a["step"]) == float(b["step"])
    assert not list(tmp_path.glob("**/*.pt")) and not list(tmp_path.glob("**/*.pkl"))


def test_vae_resumed_after_a_crash_equals_the_uninterrupted_run(world, tmp_path, monkeypatch):
    straight = train_vae(world, tmp_path / "straight", SMALL_VAE, seed=0)

    real_loss = base_vae.vae_loss
    calls = {"n": 0}

    def crash_on_fourth_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(base_vae, "vae_loss", crash_on_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        train_vae(world, tmp_path / "resumed", SMALL_VAE, seed=0)
    assert (tmp_path / "resumed" / "checkpoints" / "vae" / "state.safetensors").exists()
    monkeypatch.setattr(base_vae, "vae_loss", real_loss)
    resumed = train_vae(world, tmp_path / "resumed", SMALL_VAE, seed=0)

    assert torch.equal(_weights(straight), _weights(resumed))
    assert straight.config.scaling_factor == resumed.config.scaling_factor > 0
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "resumed" / "logs" / "vae.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume


def test_vae_reconstruction_improves_with_training(world, tmp_path):
    from diffusers import AutoencoderKL

    from modeling import configs

    batch = base_vae.vae_batch(world, 10_000, VaeRecipe(batch_size=8, crop=32))  # a batch training never draws

    def recon_error(vae) -> float:
        with torch.no_grad():
            return (vae.decode(vae.encode(batch).latent_dist.mean).sample - batch).abs().mean().item()

    torch.manual_seed(0)
    before = recon_error(AutoencoderKL(**configs.SYNTH_VAE))
    recipe = VaeRecipe(steps=80, batch_size=4, crop=32, lr=2e-3, warmup=2, checkpoint_every=1000)
    after = recon_error(train_vae(world, tmp_path, recipe, seed=0))
    assert after < 0.85 * before


def test_ldm_stage_trains_and_saves_text_encoder_and_unet(world, tmp_path):
    from modeling.tokenizer import build_word_tokenizer

    vae = train_vae(world, tmp_path, SMALL_VAE, seed=0)
    recipe = LdmRecipe(steps=3, batch_size=4, pool_size=8, checkpoint_every=2)
    text_encoder, unet = train_ldm(vae, build_word_tokenizer(), world, tmp_path, recipe, seed=0)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "text_encoder" / "model.safetensors").exists()
    again_te, again_unet = train_ldm(vae, build_word_tokenizer(), world, tmp_path, recipe, seed=0)  # finished: loads
    assert torch.equal(_weights(unet), _weights(again_unet))


def test_cosine_schedule_warms_up_then_decays():
    lrs = [cosine_lr(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] >= 0.05


def test_min_snr_weighting_caps_only_the_low_noise_steps():
    from diffusers import DDPMScheduler

    from modeling import configs
    from train.base_ldm import denoising_loss

    scheduler = DDPMScheduler.from_config(configs.SD_SCHEDULER)
    torch.manual_seed(0)
    pred, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    plain = torch.nn.functional.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    noisy, clean = torch.tensor([900, 900]), torch.tensor([1, 1])  # SNR far below / far above gamma = 5
    assert denoising_loss(pred, noise, noisy, scheduler, 5.0) == pytest.approx(plain.mean().item())
    assert denoising_loss(pred, noise, clean, scheduler, 5.0) < 0.01 * plain.mean().item()
    assert denoising_loss(pred, noise, clean, scheduler, 0.0) == pytest.approx(plain.mean().item())
