"""The distilled query encoder: network, folder, distillation, PyTorch model and engines."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from export import build_engine
from export.diffews_build import build_diffews
from modeling.diffews_folder import load_diffews
from modeling.imaging import vae_latents
from modeling.query_encoders import DistilledEncoder, DistilledEncoderConfig, load_query_encoder, save_query_encoder
from runtime.fewshot import FewShotSegmenter
from runtime.manifest import Manifest
from train import query_encoder as query_encoder_cli


def test_the_encoder_gives_a_latent_of_the_vae_shape(tiny_model):
    vae = tiny_model.vae
    encoder = DistilledEncoder(DistilledEncoderConfig.for_vae(vae)).eval()
    x = torch.rand(2, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        assert encoder(x).shape == vae_latents(vae, x).shape == (2, vae.config.latent_channels, 8, 6)


def test_at_sd21_size_the_encoder_does_a_ninth_of_the_vae_encoders_work():
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    from modeling.configs import SD21_VAE

    flops = []
    with torch.device("meta"):  # counts FLOPs without weights or arithmetic
        vae = AutoencoderKL(**SD21_VAE)
        encoder = DistilledEncoder(DistilledEncoderConfig.for_vae(vae))
        x = torch.empty(1, 3, 512, 512)
        for run in (lambda: encoder(x), lambda: vae_latents(vae, x)):
            with FlopCounterMode(display=False) as counter:
                run()
            flops.append(counter.get_total_flops())
    assert encoder.config.width == 64 and 8 < flops[1] / flops[0] < 12


def test_saved_encoder_loads_identical_and_refuses_another_vae(tiny_model, tmp_path):
    torch.manual_seed(0)
    encoder = DistilledEncoder(DistilledEncoderConfig(width=8)).eval()
    save_query_encoder(encoder, tmp_path / "e", {"note": "x"})
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(load_query_encoder(tmp_path / "e", tiny_model.vae)(x), encoder(x))
    assert json.loads((tmp_path / "e" / "config.json").read_text())["note"] == "x"
    with pytest.raises(FileNotFoundError, match="train one with python -m train.query_encoder"):
        load_query_encoder(tmp_path / "nothing", tiny_model.vae)
    save_query_encoder(DistilledEncoder(DistilledEncoderConfig(latent_channels=8, width=8)), tmp_path / "wide")
    with pytest.raises(ValueError, match="8 latent channels, this model's VAE 4"):
        load_query_encoder(tmp_path / "wide", tiny_model.vae)


def test_distillation_lowers_its_loss():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 32, 32) * 2 - 1
    target = torch.nn.functional.avg_pool2d(images, 8)[:, :3].repeat(1, 2, 1, 1)[:, :4]  # a learnable latent
    encoder = DistilledEncoder(DistilledEncoderConfig(width=8))
    with torch.no_grad():
        before = (encoder(images) - target).abs().mean().item()
    encoder, _ = query_encoder_cli.train(encoder, images, target, steps=60, batch=16, lr=5e-3, seed=0)
    with torch.no_grad():
        assert (encoder(images) - target).abs().mean().item() < 0.8 * before


@pytest.fixture(scope="module")
def tiny_with_encoder(built, tmp_path_factory):
    """The tiny model folder of the `built` fixture, with a query encoder distilled in a few steps."""
    folder = tmp_path_factory.mktemp("encoder") / "model"
    shutil.copytree(built[0], folder)
    query_encoder_cli.main(["--model", str(folder), "--episodes", "8", "--val", "6", "--steps", "5", "--batch", "8"])
    return folder


def test_distillation_writes_its_figures_and_never_replaces_an_encoder(tiny_with_encoder, capsys):
    info = json.loads((tiny_with_encoder / "query_encoder" / "config.json").read_text())
    figures = info["agreement_held_out"]
    assert figures["episodes"] == 6 and 0 <= figures["min_iou"] <= figures["mean_iou"] <= 1
    assert info["images"] == 8 * 2 * 2  # a query and a support per episode, each mirrored too
    assert info["command"].startswith("python -m train.query_encoder --model")
    weights = tiny_with_encoder / "query_encoder" / "model.safetensors"
    before = weights.read_bytes()
    with pytest.raises(SystemExit, match="--overwrite"):
        query_encoder_cli.main(["--model", str(tiny_with_encoder)])
    capsys.readouterr()
    query_encoder_cli.main(["--model", str(tiny_with_encoder), "--evaluate", "--val", "3"])
    assert json.loads(capsys.readouterr().out)["episodes"] == 3 and weights.read_bytes() == before


def test_the_distilled_encoder_in_pytorch_and_in_the_engines(built, tiny_with_encoder, tmp_path):
    model, plain = load_diffews(tiny_with_encoder), load_diffews(built[0])
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model.encode_query(x, "distilled"), model.query_encoder(x))
        assert torch.equal(model.encode_query(x), model.encode(x))
    with pytest.raises(ValueError, match="has no distilled query encoder"):
        plain.encode_query(x, "distilled")
    with pytest.raises(ValueError, match="unknown query encoder"):
        model.encode_query(x, "tiny")
    with pytest.raises(SystemExit, match="no query_encoder/"):
        build_engine.main(["--model", str(built[0]), "--out", str(tmp_path / "x"), "--query-encoder", "distilled"])

    engines = build_diffews(tmp_path / "distilled", model=tiny_with_encoder, max_shots=2, query_encoder="distilled")
    manifest = Manifest.read(engines)
    assert manifest.diffews.query_encoder == "distilled" and all(r["passed"] for r in manifest.parity)
    assert json.loads((engines / "manifest.json").read_text())["query_encoder"] == "distilled"
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 20:44] = 1
    segmenter = FewShotSegmenter.from_dir(engines)
    segmenter.set_support(image, mask)
    bank = model.bank_from_pixels(image[None, None], mask[None, None])
    want = model.segment(image[None], bank, query_encoder="distilled")[0]
    # the engine computes what the PyTorch model does with the distilled encoder
    got = segmenter.segment(image) > 0
    assert (got == want).mean() > 0.99
