"""SLiMe in PyTorch: layer selection, attention maps and WAS against direct computations, losses, embedding files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from modeling.configs import SD21_UNET
from modeling.presets import build_model
from modeling.slime import SD_WEIGHT, SlimeModel, SlimeSettings, class_weights
from modeling.slime_attention import SD21_BASE_LAYERS, SlimeAttention, layers_for
from modeling.slime_embedding import EmbeddingFileError, SlimeEmbedding, load_slime, weights_hash
from train.slime_data import PartAugmenter

NAMES = ["background", "cap", "stem"]


def _record(capture: SlimeAttention) -> list[tuple[str, tuple, torch.Tensor, torch.Tensor]]:
    """Wraps the controller so every captured layer's inputs are also kept (for direct computations)."""
    seen = []
    add_cross, add_self = capture.add_cross, capture.add_self

    def cross(logits, probs):
        seen.append(("cross", tuple(logits.shape), logits.detach(), probs.detach()))
        add_cross(logits, probs)

    def self_(probs):
        seen.append(("self", tuple(probs.shape), probs.detach(), probs.detach()))
        add_self(probs)

    capture.add_cross, capture.add_self = cross, self_
    return seen


def test_layer_selection_is_the_spec_on_sd21_base_shapes():
    """The 5 cross- and 3 self-attention layers of METHOD_SPEC 2.3, at 16/32/64 with 20/10/5 heads."""
    assert layers_for("sd21-base") == SD21_BASE_LAYERS
    assert SD21_BASE_LAYERS.cross == (
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
        "up_blocks.2.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.2.attentions.1.transformer_blocks.0.attn2",
    )
    assert SD21_BASE_LAYERS.self_attention == tuple(
        f"up_blocks.3.attentions.{i}.transformer_blocks.0.attn1" for i in range(3)
    )
    with torch.device("meta"):  # shapes only: the full SD 2.1-base UNet at 512 px, no memory, no weights
        unet = UNet2DConditionModel(**dict(SD21_UNET, sample_size=64))
        capture = SlimeAttention(unet, SD21_BASE_LAYERS, token_ids=range(6))
        seen = _record(capture)
        capture.start("train", grid_side=64, text_from=1)
        unet(torch.zeros(2, 4, 64, 64), 50, encoder_hidden_states=torch.zeros(2, 77, 1024))
    assert [(kind, shape) for kind, shape, *_ in seen] == [
        *[("cross", (2, 20, 16 * 16, 77))] * 3,
        *[("cross", (2, 10, 32 * 32, 77))] * 2,
        *[("self", (2, 5, 64 * 64, 64 * 64))] * 3,
    ]
    assert capture.cross_maps.shape == capture.was.shape == (1, 6, 64, 64)


def test_capture_leaves_other_layers_alone_and_refuses_foreign_layers():
    unet = build_model("tiny-random").unet
    before = {n: type(p).__name__ for n, p in unet.attn_processors.items()}
    layers = layers_for("tiny-random")
    SlimeAttention(unet, layers, token_ids=range(3))
    changed = {n for n, p in unet.attn_processors.items() if type(p).__name__ != before[n]}
    assert changed == {f"{n}.processor" for n in layers.cross + layers.self_attention}
    with pytest.raises(ValueError, match="no attention layer 'up_blocks.1.attentions.2"):
        SlimeAttention(build_model("tiny-random").unet, SD21_BASE_LAYERS, token_ids=range(3))


@pytest.mark.parametrize("mode", ["train", "test"])
def test_maps_and_was_equal_a_direct_computation(mode):
    """Cross maps and WAS as METHOD_SPEC 2.3 writes them, from the full per-layer maps."""
    torch.manual_seed(0)
    model = SlimeModel.from_base(build_model("tiny-random"), NAMES)
    seen = _record(model.capture)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    if mode == "train":
        model.training_losses(x, torch.randint(0, 3, (1, 8, 8)), 50, torch.Generator().manual_seed(0))
        text = slice(1, 2)  # the batch is [uncond, learned]
    else:
        model.score_maps(x, (64, 64))
        text = slice(0, 1)
    s, k = 8, 3
    cross_layers = []
    for kind, _, logits, probs in seen:
        if kind != "cross":
            continue
        source = (logits if mode == "train" else probs)[text, :, :, :k]  # [1, H, N, K]: tokens 0..K-1
        heads, side = source.shape[1], int(source.shape[2] ** 0.5)
        maps = source[0].permute(0, 2, 1).reshape(heads, k, side, side)
        cross_layers.append(F.interpolate(maps, size=(s, s), mode="bilinear", align_corners=False).mean(0))
    cross = torch.stack(cross_layers).mean(0)  # [K, S, S]
    torch.testing.assert_close(model.capture.cross_maps[0], cross)

    weights = cross.softmax(0) if mode == "train" else model.test_weights(cross[None])[0]
    self_maps = [probs[text][0].mean(0) for kind, _, probs, _ in seen if kind == "self"]  # [N(query), N(key)]
    a_sa = torch.stack(self_maps).mean(0).T.reshape(s * s, s, s)  # [j, y, x]
    was = torch.stack([(weights[c].flatten()[:, None, None] * a_sa).sum(0) for c in range(k)])
    torch.testing.assert_close(model.capture.was[0], was)


def test_class_weights_are_the_released_codes():
    labels = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 2], [0, 0, 0, 0], [0, 0, 0, 0]])
    weights = class_weights(labels, 4)  # background 12, class 1: 3, class 2: 1, class 3 absent
    torch.testing.assert_close(weights, torch.tensor([1.0, 4 / 3, 4.0, 0.0]), rtol=1e-5, atol=1e-5)


def test_loss_is_ce_plus_was_plus_weighted_sd_and_moves_only_the_learned_rows():
    torch.manual_seed(0)
    model = SlimeModel.from_base(build_model("tiny-random"), NAMES)
    assert model.learned.shape == (2, 32) and [p for p in model.parameters() if p.requires_grad] == [model.learned]
    losses = model.training_losses(
        torch.rand(1, 3, 64, 64) * 2 - 1, torch.randint(0, 3, (1, 8, 8)), 20, torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(losses["total"], losses["ce"] + losses["was_mse"] + SD_WEIGHT * losses["sd"])
    assert SD_WEIGHT == 0.005
    losses["total"].backward()
    assert model.learned.grad.abs().sum() > 0
    context = model.context()
    torch.testing.assert_close(context[0, 0], model.text[0, 0])  # BOS: the background, never learned
    torch.testing.assert_close(context[0, 3:], model.text[0, 3:])


def test_test_time_options_change_what_they_say():
    torch.manual_seed(0)
    components = build_model("tiny-random")
    model = SlimeModel.from_base(components, NAMES)
    crops = (np.random.default_rng(0).random((1, 64, 64, 3)) * 255).astype(np.uint8)
    full = model.segment_crops(crops, stop_early=False)
    np.testing.assert_array_equal(model.segment_crops(crops, stop_early=True), full)  # the rest of the UNet is unused
    np.testing.assert_array_equal(model.segment_crops(crops), model.segment_crops(crops))  # seeded noise
    model.settings = SlimeSettings(token_threshold=0.0, bgr=True)
    assert not np.allclose(model.segment_crops(crops), full)
    model.settings = SlimeSettings(token_threshold=1.1)  # no probability reaches it: every class dropped
    assert not model.segment_crops(crops).any()


def test_background_suppression_clean_and_released():
    model = SlimeModel.from_base(build_model("tiny-random"), NAMES)
    maps = torch.tensor([[0.1, 0.1], [0.1, 0.1]]).expand(1, 3, 2, 2).clone()
    maps[0, 0] = 0.05  # the background fails a 0.08 threshold
    maps[0, 1] = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    model.settings = SlimeSettings(token_threshold=0.08)
    clean = model.test_weights(maps)[0]
    assert (clean[0] == 0).all() and torch.equal(clean[1], maps[0, 1])  # dropped background; class 1 untouched
    model.settings = SlimeSettings(token_threshold=0.08, suppress_first_kept=True)
    released = model.test_weights(maps)[0]
    assert torch.equal(released[1], torch.tensor([[0.0, 0.0], [0.3, 0.4]]))  # the first kept map, cut at its mean


def test_embedding_file_round_trip_and_errors(tmp_path):
    components = build_model("tiny-random")
    model = SlimeModel.from_base(components, NAMES)
    with torch.no_grad():
        model.learned.add_(1.0)
    embedding = SlimeEmbedding.from_model(
        model, NAMES, "tiny-random", weights_hash(components.unet, components.vae), {"steps": 3}
    )
    path = embedding.save(tmp_path / "e.safetensors")
    with pytest.raises(FileExistsError, match="--overwrite"):
        embedding.save(path)
    loaded, again = load_slime(path)
    assert again.class_names == NAMES and again.info == {"steps": 3} and again.layers == model.layers
    torch.testing.assert_close(loaded.context(), model.context())
    assert again.settings == model.settings and again.base_hash == embedding.base_hash

    with pytest.raises(EmbeddingFileError, match="weights hash"):
        again.build_model(build_model("tiny-random", seed=1))
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EmbeddingFileError, match="not a readable safetensors"):
        SlimeEmbedding.load(tmp_path / "bad.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(EmbeddingFileError, match="not a SLiMe embedding"):
        SlimeEmbedding.load(tmp_path / "other.safetensors")


def test_augmenter_shapes_and_crops_that_keep_the_current_part():
    rng = np.random.default_rng(0)
    labels = np.zeros((64, 64), np.int64)
    labels[4:12, 48:60] = 1  # a small part in a corner: most random crops would miss it
    labels[30:56, 10:40] = 2
    augment = PartAugmenter(resolution=64, latent_side=8, num_classes=3, min_crop_ratio=0.5)
    for _ in range(6):
        image, small = augment(np.full((64, 64, 3), 128, np.uint8), labels, rng)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert small.shape == (8, 8) and small.dtype == np.int64 and small.max() < 3
    part = labels == 1
    for _ in range(20):
        augment._current_part = 1
        left, top, right, bottom = augment._crop_box(labels, rng)
        assert right - left == bottom - top >= 32
        assert part[top:bottom, left:right].sum() > 0.3 * part.sum()
