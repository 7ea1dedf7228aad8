"""The model presets registry: every entry builds, local folders are checked, nothing is downloaded."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from modeling import configs
from modeling.presets import PRESETS, ModelFolderError, build_model, check_model_folder
from modeling.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def tiny_folder(tiny_model, tmp_path_factory):
    """A diffusers pipeline folder of the tiny model, written with save_pretrained."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    StableDiffusionPipeline(
        vae=tiny_model.vae,
        text_encoder=tiny_model.text_encoder,
        tokenizer=tiny_model.tokenizer,
        unet=tiny_model.unet,
        scheduler=DDIMScheduler.from_config(configs.SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    return folder


def _forward(components) -> torch.Tensor:
    r = components.resolution
    with torch.no_grad():
        z = components.vae.encode(torch.zeros(1, 3, r, r)).latent_dist.mean
        ids = components.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        context = components.text_encoder(ids)[0]
        return components.unet(z, 1, context).sample


def test_registry_lists_the_four_presets():
    assert set(PRESETS) == {"tiny-random", "synth", "sd21", "sd21-base"}


def test_hub_is_offline_once_presets_are_imported():
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_tiny_random_builds_and_runs(tiny_model):
    out = _forward(tiny_model)
    assert out.shape == (1, 4, configs.TINY_RESOLUTION // 8, configs.TINY_RESOLUTION // 8)
    assert torch.isfinite(out).all()
    attn1 = [k for k in tiny_model.unet.attn_processors if k.endswith("attn1.processor")]
    assert len(attn1) == 10  # 3 down + 1 mid + 6 up with one layer per block


def test_tiny_random_is_deterministic_by_seed():
    a, b, c = (build_model("tiny-random", seed=s) for s in (3, 3, 4))
    wa, wb, wc = (next(m.unet.parameters()) for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize("name", ["sd21", "sd21-base"])
def test_local_presets_load_a_folder(name, tiny_folder, tiny_model):
    components = build_model(name, path=tiny_folder)
    assert components.preset == name and components.resolution == 512
    torch.testing.assert_close(components.unet.conv_in.weight, tiny_model.unet.conv_in.weight)
    assert _forward(components).shape[1] == 4


@pytest.mark.parametrize("name", ["sd21", "sd21-base"])
def test_local_presets_read_their_environment_variable(name, tiny_folder, monkeypatch):
    monkeypatch.setenv(PRESETS[name].path_env, str(tiny_folder))
    assert build_model(name).preset == name


def test_local_preset_without_a_path_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("SD21_PATH", raising=False)
    with pytest.raises(ModelFolderError, match="SD21_PATH"):
        build_model("sd21")


def test_missing_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist.*model_index.json, unet/, vae/"):
        build_model("sd21-base", path=tmp_path / "nowhere")


def test_incomplete_folder_names_what_is_missing(tiny_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    shutil.rmtree(broken / "vae")
    (broken / "model_index.json").unlink()
    with pytest.raises(ModelFolderError, match="missing model_index.json, vae"):
        check_model_folder(broken, "sd21")


def test_a_folder_path_loads_without_a_preset(tiny_folder):
    assert build_model(str(tiny_folder)).preset == str(tiny_folder)


def test_unknown_name_lists_the_presets():
    with pytest.raises(KeyError, match="tiny-random, synth, sd21, sd21-base"):
        build_model("sd15")


def test_sd21_shaped_unet_builds_from_its_config_without_weights():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**configs.SD21_UNET)
    names = list(unet.attn_processors)
    assert sum(n.endswith("attn1.processor") for n in names) == 16
    assert sum(n.endswith("attn2.processor") for n in names) == 16
    synth = UNet2DConditionModel(**configs.SYNTH_UNET)
    assert [n for n in synth.attn_processors] == names  # same layer paths as SD 2.1


def test_empty_prompt_is_bos_eos_then_padding():
    ids = build_word_tokenizer()([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    assert ids[0, :2].tolist() == [1, 2] and not ids[0, 2:].any()


def test_unknown_words_map_to_unk():
    tok = build_word_tokenizer()
    ids = tok(["a zebra car"]).input_ids[0]
    assert ids[2] == tok.unk_token_id and ids[3] == tok.convert_tokens_to_ids("car")
