"""The DiffewS model on tiny-random: conv_in_ref, one-step read-out, fitting, save and load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from modeling.diffews import DiffewsModel, StreamConvIn
from modeling.diffews_folder import load_diffews, model_hash, read_config, save_diffews
from modeling.presets import ModelFolderError, build_model
from modeling.readouts import MaskThreshold
from modeling.text_embeddings import empty_text_embedding


@pytest.fixture()
def model():
    return DiffewsModel.from_base(build_model("tiny-random", seed=0))


def test_conv_in_ref_starts_as_halved_repeated_conv_in(model):
    conv = model.unet.conv_in
    assert isinstance(conv, StreamConvIn) and conv.support.in_channels == 8
    torch.testing.assert_close(conv.support.weight, conv.query.weight.repeat(1, 2, 1, 1) / 2)
    torch.testing.assert_close(conv.support.bias, conv.query.bias)
    z = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(conv(torch.cat([z, z], 1)), conv(z), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        conv(torch.randn(1, 5, 8, 8))


def test_fresh_model_with_support_equal_to_query_predicts_like_the_base(model):
    """[z, z] through conv_in_ref equals conv_in(z), and fusing identical tokens changes no softmax."""
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        bank = model.support_bank(z[:, None], z[:, None])
        fused = model.predict_mask_latents(z, bank)
        plain = -model.unet(z, 1, encoder_hidden_states=model.empty_embedding).sample
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


def test_empty_prompt_embeddings():
    base = build_model("tiny-random")
    padded = empty_text_embedding(base.text_encoder, base.tokenizer, 77)
    short = empty_text_embedding(base.text_encoder, base.tokenizer, 2)
    assert padded.shape == (1, 77, 32) and short.shape == (1, 2, 32)
    # causal attention: BOS and EOS see the same tokens in both versions
    torch.testing.assert_close(padded[:, :2], short, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        empty_text_embedding(base.text_encoder, base.tokenizer, 5)


def test_two_token_model_runs():
    model = DiffewsModel.from_base(build_model("tiny-random"), tokens=2)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert model.predict_mask_latents(z, model.support_bank(z[:, None], z[:, None])).shape == (1, 4, 8, 8)


def test_relative_and_absolute_readouts():
    decoded = torch.full((1, 3, 4, 4), -1.0)
    decoded[0, :, 0, 0] = 1.0  # one white pixel, value 1.0 in [0, 1]
    decoded[0, :, 0, 1] = -0.6  # 0.2 in [0, 1]: below 0.25 x max, above an absolute 0.1
    rel = MaskThreshold()(decoded)
    absolute = MaskThreshold(relative=None, absolute=0.1)(decoded)
    assert rel.sum() == 1 and rel[0, 0, 0]
    assert absolute.sum() == 2 and absolute[0, 0, 1]
    dark = torch.full((1, 3, 4, 4), -0.9)
    dark[0, :, 2, 2] = -0.8
    assert MaskThreshold()(dark).sum() == 16  # the documented caveat: near-black still marks pixels
    with pytest.raises(ValueError, match="exactly one"):
        MaskThreshold(relative=0.25, absolute=0.1)


def test_segment_pixels_at_any_size(model):
    rng = np.random.default_rng(0)
    supports = rng.integers(0, 256, (2, 3, 64, 64, 3), dtype=np.uint8)
    masks = rng.integers(0, 2, (2, 3, 64, 64), dtype=np.uint8)
    bank = model.bank_from_pixels(supports, masks)
    assert bank.shots == 3 and bank.batch_size == 2
    out = model.segment(rng.integers(0, 256, (2, 90, 70, 3), dtype=np.uint8), bank)
    assert out.shape == (2, 90, 70) and out.dtype == bool


def test_loss_falls_when_overfitting_one_episode(model):
    torch.manual_seed(0)
    support, support_mask, query = (torch.randn(1, 2, 4, 8, 8), torch.randn(1, 2, 4, 8, 8), torch.randn(1, 4, 8, 8))
    target = torch.randn(1, 4, 8, 8)
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=2e-3)
    model.unet.train()
    losses = []
    for _ in range(40):
        out = model.query_output(query, model.support_bank(support, support_mask))
        loss = torch.nn.functional.mse_loss(out, -target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert model.unet.conv_in.support.weight.grad is not None  # the support stream learns through K/V


def test_save_then_load_gives_identical_outputs(model, tmp_path):
    with torch.no_grad():  # move conv_in_ref off its initialisation so a mix-up would show
        model.unet.conv_in.support.weight.add_(0.1 * torch.randn_like(model.unet.conv_in.support.weight))
    z, s = torch.randn(2, 4, 8, 8), torch.randn(2, 2, 4, 8, 8)
    with torch.no_grad():
        expected = model.predict_mask_latents(z, model.support_bank(s, s))
    folder = save_diffews(model, tmp_path / "m", {"base": "tiny-random"})
    loaded = load_diffews(folder)
    with torch.no_grad():
        got = loaded.predict_mask_latents(z, loaded.support_bank(s, s))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert read_config(folder)["base"] == "tiny-random" and len(model_hash(folder)) == 64
    # the unet folder is a diffusers one: conv_in_ref is the only extra weight
    plain = UNet2DConditionModel.from_pretrained(folder / "unet")
    torch.testing.assert_close(plain.conv_in.weight, model.unet.conv_in.query.weight)


def test_model_folder_errors(model, tmp_path):
    with pytest.raises(ModelFolderError, match="missing"):
        load_diffews(tmp_path)
    folder = save_diffews(model, tmp_path / "m", {"base": "tiny-random"})
    config = json.loads((folder / "diffews.json").read_text())
    (folder / "diffews.json").write_text(json.dumps(dict(config, format_version=99)))
    with pytest.raises(ModelFolderError, match="newer toolkit"):
        load_diffews(folder)


def test_gradient_checkpointing_gives_the_same_gradients(model):
    support, support_mask, query = torch.randn(2, 2, 4, 8, 8), torch.randn(2, 2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    model.train()
    grads = []
    for checkpointing in (False, True):
        model.gradient_checkpointing = checkpointing
        model.unet.zero_grad()
        out = model.query_output(query, model.support_bank(support, support_mask))
        out.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.unet.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "conv_in.support.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)
