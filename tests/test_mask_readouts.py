"""The learned mask read-outs (mask_head, mask_decoder): networks, folders, training, PyTorch model and engines."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from benchmarks import latency
from export import build_engine
from export.diffews_build import build_diffews
from export.profile_parts import choose_parts
from modeling.diffews_folder import load_diffews, save_diffews
from modeling.readouts import (
    MaskDecoder,
    MaskHead,
    MaskHeadConfig,
    MaskHeadReadout,
    half_resolution_channels,
    half_resolution_features,
    load_readout,
    save_readout,
)
from runtime.fewshot import FewShotSegmenter
from runtime.manifest import Manifest
from train import mask_decoder as mask_decoder_cli


def test_decoder_upsamples_by_eight_into_the_vae_range():
    out = MaskDecoder()(torch.randn(2, 4, 8, 6))
    assert out.shape == (2, 3, 64, 48) and out.abs().max() <= 1


def test_saved_decoder_loads_identical(tmp_path):
    torch.manual_seed(0)
    decoder = MaskDecoder().eval()
    save_readout(decoder, tmp_path / "d", {"note": "x"})
    z = torch.randn(1, 4, 8, 8)
    assert torch.equal(load_readout("mask_decoder", tmp_path / "d", None)(z), decoder(z))
    assert json.loads((tmp_path / "d" / "config.json").read_text())["note"] == "x"
    with pytest.raises(FileNotFoundError, match="train one with python -m train.mask_decoder"):
        load_readout("mask_decoder", tmp_path / "nothing", None)


def test_half_resolution_features_are_the_vae_decoder_up_to_its_last_upsampling(tiny_model):
    vae = tiny_model.vae.eval()
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        h = half_resolution_features(vae, z * vae.config.scaling_factor)
        assert h.shape == (2, half_resolution_channels(vae), 32, 32)
        decoder = vae.decoder  # the rest of the VAE decoder from there gives vae.decode exactly
        for upsampler in decoder.up_blocks[-2].upsamplers:
            h = upsampler(h)
        rest = decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(decoder.up_blocks[-1](h, None))))
        assert torch.allclose(rest, vae.decode(z).sample, atol=1e-5)


def test_head_read_out_trains_only_its_head_and_refuses_another_vae(tiny_model):
    vae = tiny_model.vae.eval()
    head = MaskHead(MaskHeadConfig(half_resolution_channels(vae)))
    readout = MaskHeadReadout(vae, head)
    out = readout(torch.randn(2, 4, 8, 6))
    assert out.shape == (2, 3, 64, 48) and out.abs().max() <= 1
    assert readout.state_dict().keys() == {f"head.{k}" for k in head.state_dict()}  # the VAE is shared, not owned
    with pytest.raises(ValueError, match="trained for another VAE"):
        MaskHeadReadout(vae, MaskHead(MaskHeadConfig(half_resolution_channels(vae) + 1)))


def test_saved_head_loads_identical(tiny_model, tmp_path):
    torch.manual_seed(0)
    head = MaskHead(MaskHeadConfig(half_resolution_channels(tiny_model.vae), width=16)).eval()
    save_readout(head, tmp_path / "h", {"note": "x"})
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(
            load_readout("mask_head", tmp_path / "h", tiny_model.vae)(z), MaskHeadReadout(tiny_model.vae, head)(z)
        )
    with pytest.raises(FileNotFoundError, match="--kind mask_head"):
        load_readout("mask_head", tmp_path / "nothing", tiny_model.vae)


@pytest.fixture(scope="module")
def tiny_with_decoder(built, tmp_path_factory):
    """The tiny model folder of the `built` fixture, with a mask head and a mask decoder distilled in a few steps."""
    folder = tmp_path_factory.mktemp("fast") / "model"
    shutil.copytree(built[0], folder)
    argv = ["--model", str(folder), "--samples", "32", "--val", "16", "--steps", "5", "--batch", "8"]
    mask_decoder_cli.main(argv + ["--kind", "mask_decoder"])
    mask_decoder_cli.main(argv + ["--head-width", "8"])  # --kind mask_head is the default
    return folder


@pytest.mark.parametrize("kind, folder", [("mask_decoder", "mask_decoder"), ("head", "mask_head")])
def test_distillation_writes_its_figures_and_keeps_existing_read_outs(tiny_with_decoder, kind, folder):
    info = json.loads((tiny_with_decoder / folder / "config.json").read_text())
    figures = info["agreement_held_out"]
    assert figures["masks"] == 16 and 0 <= figures["min_iou"] <= figures["mean_iou"] <= 1
    assert info["command"].startswith("python -m train.mask_decoder --model")
    with pytest.raises(SystemExit, match="--overwrite"):
        mask_decoder_cli.main(["--model", str(tiny_with_decoder), "--kind", kind])
    assert 0 <= figures["flipped_on_boundary_band"] <= 1 and figures["flipped_pixels_per_mask"] >= 0


def test_evaluate_reports_the_existing_decoder_and_writes_nothing(tiny_with_decoder, capsys, tmp_path):
    weights = tiny_with_decoder / "mask_head" / "model.safetensors"
    before = weights.read_bytes()
    mask_decoder_cli.main(["--model", str(tiny_with_decoder), "--evaluate", "--val", "8"])
    figures = json.loads(capsys.readouterr().out)
    assert figures["masks"] == 8 and 0 <= figures["mean_iou"] <= 1 and "iou_with_vae_maximum" in figures
    assert weights.read_bytes() == before
    bare = tmp_path / "bare"
    shutil.copytree(tiny_with_decoder, bare)
    shutil.rmtree(bare / "mask_decoder")
    with pytest.raises(SystemExit, match="no mask_decoder/ to evaluate"):
        mask_decoder_cli.main(["--model", str(bare), "--kind", "mask_decoder", "--evaluate"])


def test_boundary_band_is_the_one_pixel_ring_on_both_sides_of_an_edge():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    band = mask_decoder_cli.boundary_band(masks)[0]
    assert band.sum() == band[1:7, 1:7].sum() == 32  # the 6 x 6 ring around the square, less its 2 x 2 core
    assert not band[3:5, 3:5].any()


@pytest.mark.parametrize("readout", ["mask_decoder", "mask_head"])
def test_learned_read_outs_in_pytorch_and_in_the_engines(built, tiny_with_decoder, tmp_path, readout):
    model = load_diffews(tiny_with_decoder)
    plain = load_diffews(built[0])
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert model.decode_masks(z, readout).shape == (1, 64, 64)
    with pytest.raises(ValueError, match=f"has no {readout}"):
        plain.decode_masks(z, readout)
    with pytest.raises(ValueError, match="unknown read-out"):
        model.decode_masks(z, "tiny")
    with pytest.raises(SystemExit, match=f"no {readout}/"):
        build_engine.main(["--model", str(built[0]), "--out", str(tmp_path / "x"), "--readout", readout])

    engines = build_diffews(tmp_path / readout, model=tiny_with_decoder, max_shots=2, readout=readout)
    manifest = Manifest.read(engines)
    assert manifest.diffews.readout.decoder == readout and all(r["passed"] for r in manifest.parity)
    segmenter = FewShotSegmenter.from_dir(engines)
    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 20:44] = 1
    segmenter.set_support(image, mask)
    assert segmenter.segment(image).shape == (64, 64)


def test_the_old_read_out_names_still_work_with_a_note(tiny_with_decoder, tmp_path, capsys):
    args = build_engine.parse_args(
        ["--model", str(tiny_with_decoder), "--out", str(tmp_path / "e"), "--readout-decoder", "fast"]
    )
    assert args.readout == "mask_decoder" and "now called mask_decoder" in capsys.readouterr().err


def test_auto_read_out_is_the_head_where_the_model_has_one(built, tiny_with_decoder):
    assert choose_parts("default", "auto", "auto", load_diffews(tiny_with_decoder))[0] == "mask_head"
    assert choose_parts("default", "auto", "auto", load_diffews(built[0]))[0] == "vae"


def test_latency_rows_for_every_read_out(built, tiny_with_decoder, tmp_path):
    engines = build_diffews(tmp_path / "mask_decoder", model=tiny_with_decoder, readout="mask_decoder")
    head = build_diffews(tmp_path / "mask_head", model=tiny_with_decoder)  # auto: the mask head
    out = tmp_path / "bench"
    argv = ["--engines", str(built[1]), str(engines), str(head), "--out", str(out), "--repeats", "1", "--warmup", "0"]
    latency.main(argv + ["--backends", "onnxruntime"])
    rows = {r["row"]: r for r in json.loads((out / "latency.json").read_text())["rows"]}
    assert list(rows) == [
        "reference",
        "torch-cached",
        "onnxruntime",
        "onnxruntime, mask_decoder read-out",
        "onnxruntime, mask_head read-out",
    ]
    assert rows["onnxruntime, mask_head read-out"]["stages_ms"]["readout"] > 0
    # Same query work except the read-out, counted on the decoder each build uses (at toy width the
    # VAE decoder is the cheaper one; at SD 2.1 size the distilled one is about 700x cheaper).
    fast, vae = rows["onnxruntime, mask_decoder read-out"], rows["onnxruntime"]
    assert fast["gflop_per_query"] != pytest.approx(vae["gflop_per_query"])
    assert fast["engines"] == str(engines) and vae["engines"] == str(built[1])


def test_replacing_a_model_removes_its_stale_read_outs(tiny_with_decoder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_with_decoder, folder)
    save_diffews(load_diffews(folder), folder, {"base": "tiny-random"})
    assert not (folder / "mask_decoder").exists() and not (folder / "mask_head").exists()
    reloaded = load_diffews(folder)
    assert reloaded.mask_decoder is None and reloaded.mask_head is None


def test_a_read_out_distils_from_coco20i_episodes_of_other_sizes(tmp_path):
    """What an imported COCO model needs: its predictions on real-layout episodes, resized to the model's side."""
    from modeling.diffews import DiffewsModel
    from modeling.presets import build_model
    from segdata.folds import NUM_FOLDS
    from segdata.layouts import write_coco20i
    from segdata.synthetic import SyntheticFewShot
    from segdata.world import SyntheticWorld

    world = SyntheticWorld(resolution=80, seed=3)  # 80 px images for a 64 px model
    root = tmp_path / "coco"
    write_coco20i(
        root,
        [SyntheticFewShot(world, fold=f, split="trn", size=12) for f in range(NUM_FOLDS)],
        SyntheticFewShot(world, fold=0, split="val", size=12),
    )
    torch.manual_seed(0)
    model = save_diffews(
        DiffewsModel.from_base(build_model("tiny-random")), tmp_path / "model", {"base": "tiny-random"}
    )
    args = ["--model", str(model), "--data", "coco20i", "--fold", "0", "--samples", "8", "--val", "4", "--steps", "2"]
    with pytest.raises(SystemExit, match="--data coco20i needs --data-root"):
        mask_decoder_cli.main(args)
    assert mask_decoder_cli.main([*args, "--data-root", str(root), "--batch", "4", "--head-width", "8"]) == 0
    info = json.loads((model / "mask_head" / "config.json").read_text())
    assert info["agreement_held_out"]["masks"] == 4 and "--data coco20i" in info["command"]
    from segdata.episodes import EpisodeSampler

    trn, _ = mask_decoder_cli.episode_sources("coco20i", root, 0, 64)
    episode = EpisodeSampler(trn, 2).sample(np.random.default_rng(0))
    small = mask_decoder_cli.at_resolution(episode, 64)
    assert episode.query_image.shape == (80, 80, 3) and small.query_image.shape == (64, 64, 3)
    assert {m.shape for m in small.support_masks} == {(64, 64)} and set(np.unique(small.query_mask)) <= {0, 1}
    assert mask_decoder_cli.at_resolution(small, 64) is small
