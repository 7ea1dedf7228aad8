"""A trained DiffewS model on disk: everything inference needs, in one self-contained folder.

    DIR/diffews.json                       format, base model, resolution, read-out, training recipe
    DIR/unet/config.json                   diffusers UNet2DConditionModel config
    DIR/unet/diffusion_pytorch_model.safetensors   diffusers weight names plus conv_in_ref.weight/bias
    DIR/vae/                               the frozen base VAE (diffusers AutoencoderKL folder)
    DIR/empty_text_embedding.safetensors   "embedding": (1, L, D) float32, the fixed text conditioning
    DIR/mask_head/                         optional: the mask_head read-out (`python -m train.mask_decoder --kind mask_head`)
    DIR/mask_decoder/                      optional: the mask_decoder read-out (`python -m train.mask_decoder --kind mask_decoder`)

No text encoder or tokenizer is needed at inference: the empty prompt's embedding is a constant.
`diffusers.UNet2DConditionModel.from_pretrained(DIR / "unet")` still loads the shared UNet (it
reports conv_in_ref as an unused weight).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from modeling.diffews import DiffewsModel, load_unet_state_dict, unet_state_dict
from modeling.presets import ModelFolderError
from modeling.query_encoders import FOLDER as QUERY_ENCODER_FOLDER
from modeling.query_encoders import load_query_encoder
from modeling.readouts import LEARNED_READOUTS, MaskThreshold, load_readout
from runtime.files import replacing_file, replacing_folder, write_text

FORMAT = "diffews"
FORMAT_VERSION = 1
CONFIG_FILE = "diffews.json"
EMBEDDING_FILE = "empty_text_embedding.safetensors"
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
REQUIRED = (CONFIG_FILE, "unet/config.json", UNET_WEIGHTS, "vae/config.json", EMBEDDING_FILE)


def save_diffews(model: DiffewsModel, folder: Path, info: dict, dtype: torch.dtype = torch.float32) -> Path:
    """Writes `model` to `folder` (created; existing model files are replaced, and a `mask_head/` or
    `mask_decoder/` distilled from the replaced weights is removed).

    Args:
        info: recorded in diffews.json: at least "base" (preset or path it was fine-tuned from);
            typically also the training recipe.
        dtype: weight precision on disk (float16 halves the size; loading restores float32).
    """
    folder = Path(folder)
    # Each part is written under a temporary name and swapped in whole (`runtime.files`), diffews.json
    # last: a failed save leaves every part either old or new, never truncated.
    state = {k: v.detach().to(dtype).contiguous() for k, v in unet_state_dict(model.unet).items()}
    with replacing_folder(folder / "unet", overwrite=True) as unet:
        model.unet.save_config(unet)
        save_file(state, str(unet / Path(UNET_WEIGHTS).name), metadata={"format": "pt"})
    vae_dtype = model.vae.dtype
    with replacing_folder(folder / "vae", overwrite=True) as vae:
        model.vae.to(dtype).save_pretrained(vae, safe_serialization=True)
    model.vae.to(vae_dtype)
    with replacing_file(folder / EMBEDDING_FILE, overwrite=True) as tmp:
        save_file({"embedding": model.empty_embedding.detach().float().contiguous()}, str(tmp))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "resolution": model.resolution,
        "timestep": 1,
        "empty_prompt_tokens": int(model.empty_embedding.shape[1]),
        "readout": {"relative": model.threshold.relative, "absolute": model.threshold.absolute},
        **info,
    }
    write_text(folder / CONFIG_FILE, json.dumps(config, indent=1))
    # Only once the new model is whole: a failed save keeps the old model with its read-outs.
    for stale in (folder / kind for kind in LEARNED_READOUTS):
        if stale.is_dir():  # distilled from the weights just replaced: it would no longer match them
            shutil.rmtree(stale)
            print(
                f"removed {stale}: it was distilled from the model this save replaces; "
                "rerun python -m train.mask_decoder"
            )
    return folder


def read_config(folder: str | os.PathLike) -> dict:
    """diffews.json of `folder`, after checking that every required file is there."""
    folder = Path(folder)
    missing = [name for name in REQUIRED if not (folder / name).exists()]
    if missing:
        raise ModelFolderError(
            f"{folder} is not a DiffewS model folder: missing {', '.join(missing)}. "
            "Train one with `python -m train.diffews --out DIR` or use the shipped modeling/pretrained/synth-diffews"
        )
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("format") != FORMAT:
        raise ModelFolderError(f"{folder / CONFIG_FILE} is not a DiffewS config (format {config.get('format')!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFolderError(
            f"{folder} was written by a newer toolkit (format version {config['format_version']}, "
            f"this one reads {FORMAT_VERSION}); upgrade the toolkit"
        )
    return config


def load_diffews(folder: str | os.PathLike, attention: str = "sdpa") -> DiffewsModel:
    """Loads a DiffewS folder in float32, in eval mode (with its learned read-outs and distilled query
    encoder when it has them)."""
    folder = Path(folder)
    config = read_config(folder)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32, local_files_only=True)
    embedding = load_file(str(folder / EMBEDDING_FILE))["embedding"].float()
    threshold = MaskThreshold(**config["readout"])
    learned = {
        kind: load_readout(kind, folder / kind, vae) if (folder / kind).is_dir() else None for kind in LEARNED_READOUTS
    }
    encoder_folder = folder / QUERY_ENCODER_FOLDER
    query_encoder = load_query_encoder(encoder_folder, vae) if encoder_folder.is_dir() else None
    model = DiffewsModel(
        unet, vae, embedding, int(config["resolution"]), attention, threshold, **learned, query_encoder=query_encoder
    )
    load_unet_state_dict(model.unet, {k: v.float() for k, v in load_file(str(folder / UNET_WEIGHTS)).items()})
    return model.eval()


def model_hash(folder: str | os.PathLike) -> str:
    """sha256 over the folder's weights and config: identifies the model that made an engine or a bank."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, UNET_WEIGHTS, "vae/diffusion_pytorch_model.safetensors", EMBEDDING_FILE):
        path = folder / name
        if path.exists():
            digest.update(name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def source_folder(model: dict, folder: str | os.PathLike | None = None) -> Path:
    """The model folder an engine directory was built from (its manifest's `model`), checked by hash.

    Args:
        model: the manifest's `model` entry ({"source": folder, "hash": model_hash}).
        folder: look here instead of the recorded source (the folder moved, or another machine).
    Raises:
        ModelFolderError when the folder is missing or holds another model than the engines'.
    """
    folder = Path(folder if folder is not None else model["source"])
    read_config(folder)  # a clear error when it is no model folder at all
    if model_hash(folder) != model["hash"]:
        raise ModelFolderError(
            f"{folder} is not the model these engines were built from (its hash differs); "
            "pass the right model folder, or rebuild the engines from this one"
        )
    return folder
