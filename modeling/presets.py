"""Named model presets: one function builds (VAE, text encoder + tokenizer, UNet, scheduler config).

    components = build_model("tiny-random")                      # random, in seconds (unit tests)
    components = build_model("synth")                            # the embedded default, shipped
    components = build_model("sd21", path="/models/sd-2-1")      # DiffewS base, local folder
    components = build_model("sd21-base", path="/models/sd-2-1-base")  # SLiMe base
    components = build_model("/any/diffusers/folder")            # a folder saved by this toolkit

Nothing is ever downloaded: the Hugging Face hub is switched to offline mode before diffusers or
transformers are imported, and every load passes `local_files_only=True`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before importing diffusers / transformers, so that neither ever tries the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel  # noqa: E402

from modeling import configs  # noqa: E402
from modeling.tokenizer import build_word_tokenizer  # noqa: E402

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
SYNTH_BASE_DIR = PRETRAINED_DIR / "synth-base"

REQUIRED_ENTRIES = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer")
EXPECTED_LAYOUT = (
    "a diffusers pipeline folder holding model_index.json, unet/, vae/, text_encoder/ and tokenizer/ "
    "(scheduler/ optional), as written by `StableDiffusionPipeline.save_pretrained`"
)


@dataclass
class ModelComponents:
    """The parts of a latent diffusion model that the toolkit uses.

    Attributes:
        vae: image <-> latent autoencoder; latents are scaled by `vae.config.scaling_factor`.
        text_encoder: CLIP text transformer; its last hidden state (B, 77, D) conditions the UNet.
        tokenizer: turns prompts into (B, 77) token ids, padded with id 0.
        unet: the denoiser, (B, 4, h, w) latents to (B, 4, h, w).
        scheduler_config: the noise schedule, for `DDPMScheduler.from_config` and friends.
        preset: the preset name, or the folder the model was loaded from.
        resolution: the image side the model works at, in pixels.
    """

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: Any
    unet: UNet2DConditionModel
    scheduler_config: dict
    preset: str
    resolution: int

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae, "text_encoder": self.text_encoder, "unet": self.unet}


class ModelFolderError(FileNotFoundError):
    """A local model folder is missing or incomplete."""


@dataclass(frozen=True)
class Preset:
    """A registry entry.

    Attributes:
        name: what `build_model` is called with.
        description: one line for `--help` texts and error messages.
        resolution: the image side the method runs at with this model.
        needs_path: whether the weights come from a user-supplied local folder.
        path_env: environment variable read when no path is passed.
    """

    name: str
    description: str
    resolution: int
    builder: Callable[..., ModelComponents]
    needs_path: bool = False
    path_env: str | None = None


def check_model_folder(path: str | os.PathLike, preset: str = "model") -> Path:
    """Returns `path` as a Path if it holds a diffusers pipeline folder, else raises ModelFolderError."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"{preset}: model folder {folder} does not exist; expected {EXPECTED_LAYOUT}")
    missing = [entry for entry in REQUIRED_ENTRIES if not (folder / entry).exists()]
    if missing:
        raise ModelFolderError(
            f"{preset}: model folder {folder} is incomplete, missing {', '.join(missing)}; expected {EXPECTED_LAYOUT}"
        )
    return folder


def load_model_folder(path: str | os.PathLike, preset: str | None = None, resolution: int | None = None):
    """Loads a local diffusers pipeline folder (SD 2.1, SD 2.1-base, the synth base, ...) in fp32."""
    folder = check_model_folder(path, preset or "model")
    dtype = torch.float32
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype, local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(
        folder, subfolder="text_encoder", torch_dtype=dtype, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    scheduler_config = dict(configs.SD_SCHEDULER)
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if scheduler_file.exists():
        scheduler_config = json.loads(scheduler_file.read_text())
    if resolution is None:
        resolution = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    for module in (vae, unet, text_encoder):
        module.eval()
    return ModelComponents(vae, text_encoder, tokenizer, unet, scheduler_config, preset or str(folder), int(resolution))


def _tiny_random(seed: int = 0, **_: Any) -> ModelComponents:
    """A randomly initialised model of the synth architecture at toy width, built in well under a second."""
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer()
    text_config = CLIPTextConfig(vocab_size=len(tokenizer), **configs.TINY_TEXT_ENCODER)
    return ModelComponents(
        vae=AutoencoderKL(**configs.TINY_VAE).eval(),
        text_encoder=CLIPTextModel(text_config).eval(),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**configs.TINY_UNET).eval(),
        scheduler_config=dict(configs.SD_SCHEDULER),
        preset="tiny-random",
        resolution=configs.TINY_RESOLUTION,
    )


def _synth(path: str | os.PathLike | None = None, **_: Any) -> ModelComponents:
    folder = Path(path) if path else SYNTH_BASE_DIR
    if not folder.exists() and not path:
        raise ModelFolderError(
            f"synth: the embedded base model is missing from {folder}; "
            "reinstall the package or rebuild it with `python -m train.base`"
        )
    return load_model_folder(folder, "synth", configs.SYNTH_RESOLUTION)


def _local_sd(name: str, resolution: int) -> Callable[..., ModelComponents]:
    def build(path: str | os.PathLike | None = None, **_: Any) -> ModelComponents:
        env = PRESETS[name].path_env
        path = path or os.environ.get(env or "")
        if not path:
            raise ModelFolderError(
                f"{name}: no model folder given; pass path=... (--base-path on the command line) "
                f"or set {env} to a local copy of the weights, {EXPECTED_LAYOUT}"
            )
        return load_model_folder(path, name, resolution)

    return build


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny-random", "random toy-width model for unit tests", configs.TINY_RESOLUTION, _tiny_random),
        Preset("synth", "the embedded base trained on the synthetic world", configs.SYNTH_RESOLUTION, _synth),
        Preset(
            "sd21",
            "Stable Diffusion 2.1 (768-v) from a local folder; DiffewS fine-tunes it at 512 px",
            512,
            _local_sd("sd21", 512),
            needs_path=True,
            path_env="SD21_PATH",
        ),
        Preset(
            "sd21-base",
            "Stable Diffusion 2.1-base (512, epsilon) from a local folder; the SLiMe base",
            512,
            _local_sd("sd21-base", 512),
            needs_path=True,
            path_env="SD21_BASE_PATH",
        ),
    )
}


def build_model(name: str, path: str | os.PathLike | None = None, seed: int = 0) -> ModelComponents:
    """Builds the model of preset `name`, or loads the diffusers folder `name` points at.

    Args:
        name: a key of PRESETS, or a path to a diffusers pipeline folder.
        path: the local weights folder for presets that need one (sd21, sd21-base), or an
            alternative folder for `synth`.
        seed: initialisation seed of `tiny-random`.
    Raises:
        ModelFolderError: the folder is missing or lacks one of model_index.json, unet/, vae/,
            text_encoder/, tokenizer/.
        KeyError: `name` is neither a preset nor an existing folder.
    """
    if name in PRESETS:
        return PRESETS[name].builder(path=path, seed=seed)
    if Path(name).expanduser().exists():
        return load_model_folder(name)
    raise KeyError(f"unknown model {name!r}: choose a preset ({', '.join(PRESETS)}) or a diffusers folder path")


# ---------------------------------------------------------------- DiffewS architectures with random weights
@dataclass(frozen=True)
class RandomDiffews:
    """A DiffewS architecture with seeded random weights, and what a manifest records of it.

    Speed and graph size do not depend on the weights, so full-size export and latency checks
    need no download: `export.build_engine --random-arch sd21` and `benchmarks.latency --arch sd21`
    build the same model from the same seed.
    """

    source: str
    hash: str
    seed: int = 0


RANDOM_ARCHS = {"sd21": RandomDiffews("random sd21 (seed 0)", "random-sd21-seed0")}


def random_diffews(arch: str = "sd21", attention: str = "sdpa"):
    """The `arch` DiffewS model (`RANDOM_ARCHS`) with random weights, a random mask head, mask decoder and
    distilled query encoder, in eval mode."""
    from modeling.diffews import DiffewsModel
    from modeling.query_encoders import DistilledEncoder, DistilledEncoderConfig
    from modeling.readouts import MaskDecoder, MaskHead, MaskHeadConfig, MaskHeadReadout, half_resolution_channels

    if arch not in RANDOM_ARCHS:
        raise ValueError(f"unknown random architecture {arch!r}; choose one of {', '.join(RANDOM_ARCHS)}")
    torch.manual_seed(RANDOM_ARCHS[arch].seed)
    unet, vae = UNet2DConditionModel(**configs.SD21_UNET), AutoencoderKL(**configs.SD21_VAE)
    embedding = torch.randn(1, 77, configs.SD21_UNET["cross_attention_dim"])
    decoder = MaskDecoder()
    head = MaskHeadReadout(vae, MaskHead(MaskHeadConfig(half_resolution_channels(vae))))
    query_encoder = DistilledEncoder(DistilledEncoderConfig.for_vae(vae))  # drawn last: the others' weights stay
    return DiffewsModel(
        unet, vae, embedding, 512, attention, mask_decoder=decoder, mask_head=head, query_encoder=query_encoder
    ).eval()
