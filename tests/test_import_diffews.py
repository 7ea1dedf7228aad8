"""train.import_diffews on fixtures written in the authors' layouts, the way their scripts write them.

The fixtures use stock diffusers classes at tiny width: a base pipeline saved by
`StableDiffusionPipeline.save_pretrained`, converted as `load_ckpt_and_modify_ref8in_tag4in.py` does
(conv_in_ref attached as an attribute of the stock UNet, pipeline saved again), then "fine-tuned"
(every weight perturbed) and saved as `accelerator.save_state`'s hook does, `unet.save_pretrained`,
in safetensors, a torch pickle, shards, and with their `in_channels_ref` config key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from modeling.checkpoint_files import CheckpointError
from modeling.diffews import unet_state_dict
from modeling.diffews_folder import load_diffews, read_config
from modeling.presets import build_model
from runtime.files import OutputError, OutputExistsError
from train import import_diffews
from train.evaluate import model_card
from train.import_diffews import import_diffews as run_import

RESOLUTION = 64  # the tiny-random model's


def convert_the_authors_way(stock, converted):
    """What load_ckpt_and_modify_ref8in_tag4in.py does, on a stock pipeline folder."""
    pipe = StableDiffusionPipeline.from_pretrained(stock, local_files_only=True)
    conv_in = pipe.unet.conv_in
    ref = torch.nn.Conv2d(8, conv_in.out_channels, conv_in.kernel_size, conv_in.stride, conv_in.padding, bias=True)
    with torch.no_grad():
        ref.weight = torch.nn.Parameter(conv_in.weight.repeat(1, 2, 1, 1) / 2)
        ref.bias = torch.nn.Parameter(conv_in.bias.clone())
    pipe.unet.conv_in_ref = ref
    pipe.save_pretrained(converted)
    return pipe.unet


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Paths of the authors' layouts: base pipelines and checkpoint-N/unet folders in every weight format."""
    root = tmp_path_factory.mktemp("authors")
    c = build_model("tiny-random", seed=3)
    StableDiffusionPipeline(
        vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
        scheduler=DDIMScheduler.from_config(c.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(root / "stable-diffusion-2-1")  # fmt: skip
    unet = convert_the_authors_way(root / "stable-diffusion-2-1", root / "converted")
    torch.manual_seed(7)
    with torch.no_grad():  # "fine-tuning": every weight moves, so conv_in_ref no longer equals [conv_in, conv_in] / 2
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    checkpoints = {}
    for name, kwargs in {
        "safetensors": {},
        "bin": {"safe_serialization": False},
        "sharded": {"max_shard_size": "40KB"},
        "sharded-bin": {"safe_serialization": False, "max_shard_size": "40KB"},
        "in_channels_ref": {},
    }.items():
        folder = root / name / "checkpoint-2000" / "unet"
        unet.save_pretrained(folder, **kwargs)
        checkpoints[name] = folder
    config = json.loads((checkpoints["in_channels_ref"] / "config.json").read_text())
    config.update(in_channels_ref=8, _class_name="MyUNet2DConditionModel")  # what their UNet subclass saves
    (checkpoints["in_channels_ref"] / "config.json").write_text(json.dumps(config))
    expected = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    return {"root": root, "base": root / "stable-diffusion-2-1", "converted": root / "converted",
            "checkpoints": checkpoints, "state": expected}  # fmt: skip


def test_the_fixtures_are_in_the_layouts_claimed(release):
    ckpt = release["checkpoints"]
    assert (ckpt["bin"] / "diffusion_pytorch_model.bin").is_file()
    assert (ckpt["sharded"] / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert (ckpt["sharded-bin"] / "diffusion_pytorch_model.bin.index.json").is_file()
    assert len(list(ckpt["sharded"].glob("*.safetensors"))) > 2 and len(list(ckpt["sharded-bin"].glob("*.bin"))) > 2
    assert "in_channels_ref" not in json.loads((release["converted"] / "unet" / "config.json").read_text())
    assert "conv_in_ref.weight" in load_file(str(release["converted"] / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("layout", ["safetensors", "bin", "sharded", "sharded-bin", "in_channels_ref"])
def test_every_layout_imports_the_checkpoint_weights_unchanged(release, layout, tmp_path):
    unet_dir = release["checkpoints"][layout]
    # --unet accepts the unet/ folder, and checkpoint-N/ above it as the authors' --unet_ckpt_path does
    given = unet_dir if layout != "bin" else unet_dir.parent
    out = run_import(given, release["base"], tmp_path / "model", resolution=RESOLUTION)
    model = load_diffews(out)
    got = unet_state_dict(model.unet)
    assert set(got) == set(release["state"])
    for name, want in release["state"].items():
        assert torch.equal(got[name], want), name
    config = read_config(out)
    assert config["empty_prompt_tokens"] == 2 and config["resolution"] == RESOLUTION
    assert config["imported"]["weights"].startswith("torch pickle" if "bin" in layout else "safetensors")
    files = [p for p in unet_dir.iterdir() if p.name != "config.json"]
    assert config["imported"]["sha256"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    if layout == "in_channels_ref":
        assert config["imported"]["ignored_config_keys"] == {"in_channels_ref": 8}
    card = (out / "README.md").read_text()
    assert "imported from the authors' checkpoint" in card and str(unet_dir.resolve()) in card
    evaluation_card = model_card(config, [], "python -m train.evaluate --card", fold=2)  # what --card writes later
    assert evaluation_card.startswith(card) and "## Evaluation (held-out categories of fold 2)" in evaluation_card


class AuthorsBankProcessor:
    """The authors' self-attention with a K/V bank (their xformers processor), written independently of
    modeling.kv_fusion: the first (support) pass stores K and V; later (query) passes append the
    bank, all shots' tokens in a row, after the query's own tokens."""

    def __init__(self):
        self.key = self.value = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        assert encoder_hidden_states is None and attn.group_norm is None and not attn.residual_connection
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if self.key is None:
            self.key, self.value = key, value
        else:
            batch, _, width = key.shape
            key = torch.cat([key, self.key.reshape(batch, -1, width)], dim=1)
            value = torch.cat([value, self.value.reshape(batch, -1, width)], dim=1)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(query, key, None), value))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


@torch.no_grad()
def authors_mask_latent(unet_dir, base, z_support, z_mask, z_query):
    """-UNet(query) after UNet(support), the authors' OI2M forward at t = 1 with the 2-token empty prompt."""
    unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True).eval()  # drops conv_in_ref
    state = load_file(str(unet_dir / "diffusion_pytorch_model.safetensors"))  # not the importer's reader
    conv_in_ref = torch.nn.Conv2d(8, unet.conv_in.out_channels, 3, padding=1)
    conv_in_ref.load_state_dict({"weight": state["conv_in_ref.weight"], "bias": state["conv_in_ref.bias"]})
    unet.set_attn_processor(
        {n: AuthorsBankProcessor() if n.endswith("attn1.processor") else p for n, p in unet.attn_processors.items()}
    )
    pipe = StableDiffusionPipeline.from_pretrained(base, local_files_only=True)
    ids = pipe.tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids
    context = pipe.text_encoder(ids)[0]
    conv_in, unet.conv_in = unet.conv_in, conv_in_ref  # is_target=False: the support stream's input conv
    unet(torch.cat([z_support, z_mask], dim=1), 1, encoder_hidden_states=context.repeat(len(z_support), 1, 1))
    unet.conv_in = conv_in
    return -unet(z_query, 1, encoder_hidden_states=context).sample


@pytest.mark.parametrize("shots", [1, 3])
def test_imported_query_output_equals_the_authors_forward(release, shots, tmp_path):
    unet_dir = release["checkpoints"]["safetensors"]
    model = load_diffews(run_import(unet_dir, release["base"], tmp_path / "model", resolution=RESOLUTION))
    generator = torch.Generator().manual_seed(shots)
    z_support, z_mask = (torch.randn(shots, 4, 8, 8, generator=generator) for _ in range(2))
    z_query = torch.randn(1, 4, 8, 8, generator=generator)
    want = authors_mask_latent(unet_dir, release["base"], z_support, z_mask, z_query)
    with torch.no_grad():
        got = model.predict_mask_latents(z_query, model.support_bank(z_support[None], z_mask[None]))
        swapped = model.predict_mask_latents(z_query, model.support_bank(z_mask[None], z_support[None]))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (swapped - want).abs().max() > 1e-3  # the comparison sees the order [image, mask]


@pytest.mark.parametrize("tokens, padding", [(2, "do_not_pad"), (77, "max_length")])
def test_the_context_is_the_empty_prompt_padded_as_the_flag_says(release, tmp_path, tokens, padding):
    out = tmp_path / "model"
    import_diffews.main(["--unet", str(release["converted"]), "--base", str(release["base"]), "--out", str(out),
                         "--resolution", str(RESOLUTION), "--context-tokens", str(tokens)])  # fmt: skip
    pipe = StableDiffusionPipeline.from_pretrained(release["base"], local_files_only=True)
    ids = pipe.tokenizer("", padding=padding, max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        want = pipe.text_encoder(ids)[0]
    assert read_config(out)["empty_prompt_tokens"] == tokens == want.shape[1]
    torch.testing.assert_close(load_diffews(out).empty_embedding, want, rtol=0, atol=0)


def test_a_pickle_that_runs_code_is_refused_before_it_runs(release, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    unet_dir = tmp_path / "evil" / "unet"
    shutil.copytree(release["checkpoints"]["bin"], unet_dir)
    torch.save({"conv_in.weight": Payload()}, unet_dir / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"refused to read .*diffusion_pytorch_model.bin.*(system|GLOBAL)"):
        run_import(unet_dir, release["base"], tmp_path / "model", resolution=RESOLUTION)
    assert not marker.exists() and not (tmp_path / "model").exists()


def edited_checkpoint(release, tmp_path, edit) -> str:
    """A copy of the safetensors checkpoint whose state dict `edit` changed."""
    unet_dir = tmp_path / "edited" / "unet"
    shutil.copytree(release["checkpoints"]["safetensors"], unet_dir)
    path = unet_dir / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))
    return unet_dir


def test_a_plain_sd_unet_names_the_missing_tensor_and_the_conversion_step(release, tmp_path):
    with pytest.raises(CheckpointError, match=r"no conv_in_ref\.weight.*load_ckpt_and_modify_ref8in_tag4in"):
        run_import(release["base"] / "unet", release["base"], tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_damaged_files_and_folders_get_clear_errors(release, tmp_path):
    """A git-lfs pointer, a .bin of no state dict, a bad config or shard index, a lost shard: one clear error each."""
    out = tmp_path / "model"

    def copy(layout: str, name: str):
        folder = tmp_path / name / "unet"
        shutil.copytree(release["checkpoints"][layout], folder)
        return folder

    cases = []
    lfs = copy("safetensors", "lfs")
    (lfs / "diffusion_pytorch_model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0\n"
    )
    cases.append((lfs, r"is a git-lfs pointer, not the weights; fetch them with `git lfs pull`"))
    garbage = copy("bin", "garbage")
    (garbage / "diffusion_pytorch_model.bin").write_bytes(b"not a pickle at all")
    cases.append((garbage, r"diffusion_pytorch_model.bin is not a readable bin weight file"))
    tensor = copy("bin", "tensor")
    torch.save(torch.zeros(3), tensor / "diffusion_pytorch_model.bin")
    cases.append((tensor, r"holds a Tensor, not a state dict of tensors"))
    config = copy("safetensors", "config")
    (config / "config.json").write_text("{not json")
    cases.append((config, r"config.json is not a readable diffusers config"))
    wrong = copy("safetensors", "wrong-config")
    (wrong / "config.json").write_text(json.dumps({"block_out_channels": 5}))
    cases.append((wrong, r"config.json is not a UNet2DConditionModel config"))
    lost = copy("sharded", "lost-shard")
    next(lost.glob("*-00002-of-*.safetensors")).unlink()
    cases.append((lost, r"names \d+ shards but diffusion_pytorch_model-00002-of-\d+.safetensors is missing"))
    index = copy("sharded", "bad-index")
    (index / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a"]}))
    cases.append((index, r"its weight_map must map tensor names to shard file names"))
    empty = tmp_path / "empty" / "unet"
    empty.mkdir(parents=True)
    shutil.copy(release["checkpoints"]["safetensors"] / "config.json", empty)
    cases.append((empty, r"holds no diffusers weights: expected diffusion_pytorch_model.safetensors or .bin"))
    for folder, message in cases:
        with pytest.raises(CheckpointError, match=message):
            run_import(folder, release["base"], out, resolution=RESOLUTION)
        assert not out.exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.update({"conv_in_ref.weight": s["conv_in_ref.weight"][:, :4].contiguous()}),
            r"conv_in_ref.weight is .*8 input",
        ),
        (lambda s: s.update({"conv_in.weight": s["conv_in_ref.weight"].clone()}), r"conv_in.weight is .*4 input"),
        (lambda s: s.pop("conv_in_ref.bias"), r"no conv_in_ref\.bias"),
        (lambda s: s.pop("conv_in.weight"), r"no conv_in.weight / conv_in.bias: this is not a diffusers UNet"),
        (lambda s: s.pop("mid_block.resnets.0.conv1.weight"), r"do not fit its config.json"),
    ],
)
def test_wrong_input_convs_and_missing_weights_get_clear_errors(release, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        run_import(edited_checkpoint(release, tmp_path, edit), release["base"], tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_base_without_a_vae_or_of_another_width_is_refused(release, tmp_path):
    incomplete = tmp_path / "no-vae"
    shutil.copytree(release["base"], incomplete)
    shutil.rmtree(incomplete / "vae")
    with pytest.raises(CheckpointError, match=r"has no vae/"):
        run_import(release["checkpoints"]["safetensors"], incomplete, tmp_path / "model")
    with pytest.raises(CheckpointError, match=r"--base .* is a file, not a folder"):
        run_import(release["checkpoints"]["safetensors"], incomplete / "model_index.json", tmp_path / "model")
    other = tmp_path / "wide-base"
    shutil.copytree(release["base"], other)
    text_encoder = CLIPTextModel.from_pretrained(other / "text_encoder")
    wider = CLIPTextConfig(**{**text_encoder.config.to_dict(), "hidden_size": 48, "projection_dim": 48})
    shutil.rmtree(other / "text_encoder")
    CLIPTextModel(wider).save_pretrained(other / "text_encoder")  # a base of another text width
    with pytest.raises(CheckpointError, match=r"cross-attends to 32-wide text but the base's text encoder is 48-wide"):
        run_import(release["checkpoints"]["safetensors"], other, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_an_out_that_holds_the_source_is_refused_even_with_overwrite(release, tmp_path):
    source = tmp_path / "release"
    shutil.copytree(release["checkpoints"]["safetensors"].parent, source / "checkpoint-2000")
    with pytest.raises(OutputError, match=r"holds --unet .*would replace the import's source"):
        run_import(source / "checkpoint-2000" / "unet", release["base"], source, overwrite=True)
    assert (source / "checkpoint-2000" / "unet" / "config.json").is_file()


def test_the_cli_refuses_an_existing_out_and_reports_errors_in_one_line(release, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["--unet", str(release["checkpoints"]["safetensors"]), "--base", str(release["base"]), "--out", str(out)]
    with pytest.raises(SystemExit, match=r"error: .*exists.*--overwrite"):
        import_diffews.main(args)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(OutputExistsError):
        run_import(release["checkpoints"]["safetensors"], release["base"], out)
    with pytest.raises(SystemExit, match=r"^error: --unet .* does not exist$"):
        import_diffews.main(
            ["--unet", str(tmp_path / "nope"), "--base", str(release["base"]), "--out", str(tmp_path / "o")]
        )
    assert import_diffews.main(args + ["--overwrite", "--resolution", str(RESOLUTION)]) == 0
    assert not (out / "keep.txt").exists() and read_config(out)["imported"]["command"].startswith("python -m train")


def run_cli(module: str, *args) -> None:
    """`python -m module args...` in a fresh process, as a user types it; fails the test with its stderr."""
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, f"python -m {module} failed:\n{done.stderr[-3000:]}"


@pytest.mark.slow
def test_the_three_commands_of_the_recipe_give_the_pytorch_models_masks(release, episodes, tmp_path):
    """docs/released-models.md: import, build_engine, runtime.segment, each as a command line."""
    from modeling.predictor import TorchFewShotSegmenter
    from runtime.images import save_png
    from runtime.manifest import Manifest
    from segdata.metrics import mask_iou

    model_dir, engines, masks_dir = tmp_path / "model", tmp_path / "engines", tmp_path / "masks"
    run_cli("train.import_diffews", "--unet", release["checkpoints"]["sharded-bin"].parent, "--base", release["base"],
            "--out", model_dir, "--resolution", RESOLUTION)  # fmt: skip
    run_cli("export.build_engine", "--model", model_dir, "--out", engines, "--max-shots", 2, "--parity-episodes", 1)
    assert all(row["passed"] for row in json.loads((engines / "manifest.json").read_text())["parity"])
    # The default rule reduces 2 shots to the 1 shot an imported folder records; PyTorch keeps the same tokens.
    selection = Manifest.read(engines).diffews.selection
    assert selection.reduces(2)
    reference = TorchFewShotSegmenter.from_folder(model_dir, selection=selection)
    for e, episode in enumerate(episodes[:2]):
        files = []
        for s, (image, mask) in enumerate(zip(episode.support_images, episode.support_masks)):
            files += ["--support", save_png(image, tmp_path / f"e{e}s{s}.png", False)]
            files += ["--support-mask", save_png(mask.astype(np.uint8) * 255, tmp_path / f"e{e}s{s}_mask.png", False)]
        query = save_png(episode.query_image, tmp_path / f"query{e}.png", False)
        run_cli("runtime.segment", "--engines", engines, *files, "--query", query, "--out", masks_dir, "--overwrite")
        got = np.asarray(Image.open(masks_dir / f"query{e}_mask.png"))  # white on black
        reference.set_support(episode.support_images, episode.support_masks)
        want = reference.segment(episode.query_image)
        assert got.shape[:2] == want.shape == episode.query_image.shape[:2]
        assert 0 < want.mean() < 1  # not a trivial mask
        assert mask_iou(got > 127, want > 0) >= 0.99
