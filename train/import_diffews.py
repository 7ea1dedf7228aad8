"""Imports a DiffewS UNet checkpoint of the authors' released code into this toolkit's model folder.

    python -m train.import_diffews --unet weight/coco_fold0/unet --base /models/sd-2-1 --out models/coco-fold0
    python -m export.build_engine --model models/coco-fold0 --out engines/coco-fold0 --max-shots 5
    python -m runtime.segment --engines engines/coco-fold0 --support s.jpg --support-mask s.png --query q.jpg --out masks/

What the authors' code writes (METHOD_SPEC 1.2, 1.12): `checkpoint-N/unet/` of their training (the
released `weight/coco_fold{0..3}/unet`, `weight/incontext/unet`), or the `unet/` of their converted
pipeline `stable-diffusion-2-1-ref8inchannels-tag4inchannels`: a diffusers UNet folder whose weights
hold `conv_in_ref.weight` / `.bias` (Conv2d 8 -> 320, the support stream's input) besides the stock
`conv_in` (4 -> 320, the query stream's). The config may be the stock one or carry `in_channels_ref`;
the weights may be safetensors or a torch pickle (read with `weights_only=True`), whole or sharded.

`--unet` takes that folder, or the folder above it (`checkpoint-N/`). `--base` is a diffusers
pipeline folder of the base, SD 2.1 (768-v), or the authors' converted pipeline: its VAE is copied
into the model and its text encoder computes the empty-prompt embedding once. Context: 2 tokens by
default, the authors' evaluation (`padding="do_not_pad"`), so the released weights give the papers'
numbers; `--context-tokens 77` is the padded prompt their training used. The UNet runs at 512 px,
the resolution the authors fine-tuned and evaluated at.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Before importing diffusers / transformers, so that neither ever tries the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from accelerate import init_empty_weights  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers import AutoTokenizer, CLIPTextModel  # noqa: E402

from modeling.checkpoint_files import CheckpointError, WeightFiles, read_state_dict  # noqa: E402
from modeling.diffews import DiffewsModel, load_unet_state_dict  # noqa: E402
from modeling.diffews_folder import save_diffews  # noqa: E402
from modeling.text_embeddings import EMPTY_PROMPT_TOKENS, empty_text_embedding  # noqa: E402
from runtime.cli import one_line, refuse_to_overwrite  # noqa: E402
from runtime.files import OutputError, check_writable, replacing_folder, write_text  # noqa: E402

AUTHORS_CONTEXT_TOKENS = 2  # their evaluation pipeline tokenizes "" without padding
AUTHORS_RESOLUTION = 512  # --resolution 512 in their training, --img-size 512 in their evaluation
CONVERSION_STEP = (
    "the authors' train_tools/load_ckpt_and_modify_ref8in_tag4in.py adds it (conv_in repeated twice along "
    "its input axis and halved) before fine-tuning; pass the fine-tuned checkpoint-N/unet, not a stock SD UNet"
)


def unet_folder(path: Path) -> Path:
    """The diffusers UNet folder at `path`, or at `path/unet` (a checkpoint-N or a pipeline folder)."""
    for candidate in (path, path / "unet"):
        if (candidate / "config.json").is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"--unet {path} does not exist")
    raise CheckpointError(
        f"--unet {path} is not a diffusers UNet folder: no config.json in it or in {path / 'unet'}; "
        "pass the checkpoint's unet/ folder (checkpoint-N/unet, weight/coco_fold0/unet)"
    )


def meta_unet(folder: Path) -> tuple[UNet2DConditionModel, dict]:
    """The UNet that `folder/config.json` describes, on the meta device (no memory for weights the
    checkpoint's replace), and the config keys diffusers' UNet does not take (ignored, recorded)."""
    try:
        config = UNet2DConditionModel.load_config(folder)
    except (OSError, ValueError) as err:  # diffusers reports bad JSON as an EnvironmentError
        raise CheckpointError(
            f"{folder / 'config.json'} is not a readable diffusers config ({one_line(err)})"
        ) from None
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its "not expected and will be ignored" warning: recorded instead
    try:
        with init_empty_weights():
            unet, unused = UNet2DConditionModel.from_config(config, return_unused_kwargs=True)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise CheckpointError(
            f"{folder / 'config.json'} is not a UNet2DConditionModel config ({one_line(err)})"
        ) from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return unet.eval(), {k: v for k, v in unused.items() if not k.startswith("_")}


def check_input_convs(
    state: dict[str, torch.Tensor], unet: UNet2DConditionModel, extra: dict, latent_channels: int
) -> None:
    """Raises CheckpointError unless conv_in takes the query latent and conv_in_ref the support's two latents."""
    if "conv_in.weight" not in state or "conv_in.bias" not in state:
        raise CheckpointError(
            "the weights have no conv_in.weight / conv_in.bias: this is not a diffusers UNet2DConditionModel "
            "checkpoint; pass the checkpoint's unet/ folder"
        )
    missing = [name for name in ("conv_in_ref.weight", "conv_in_ref.bias") if name not in state]
    if missing:
        raise CheckpointError(
            f"the UNet weights have no {' or '.join(missing)}: this is not a DiffewS UNet (the support "
            f"stream's 8-channel input conv is missing); {CONVERSION_STEP}"
        )
    query, support = state["conv_in.weight"], state["conv_in_ref.weight"]
    expected = {"conv_in": latent_channels, "conv_in_ref": 2 * latent_channels}
    for name, weight in (("conv_in", query), ("conv_in_ref", support)):
        if weight.ndim != 4 or weight.shape[1] != expected[name]:
            raise CheckpointError(
                f"{name}.weight is {tuple(weight.shape)}: it must take {expected[name]} input channels "
                f"({'the query latent' if name == 'conv_in' else 'the support image latent then its mask latent'}, "
                f"{latent_channels} channels each from the base's VAE)"
            )
    if support.shape[0] != query.shape[0] or state["conv_in_ref.bias"].shape != state["conv_in.bias"].shape:
        raise CheckpointError(
            f"conv_in_ref.weight {tuple(support.shape)} does not match conv_in.weight {tuple(query.shape)} "
            "in output channels or bias: both streams feed the same first block"
        )
    if unet.config.in_channels != latent_channels:
        raise CheckpointError(
            f"config.json says in_channels {unet.config.in_channels}, but DiffewS's query stream takes the "
            f"{latent_channels}-channel latent alone"
        )
    if "in_channels_ref" in extra and extra["in_channels_ref"] != 2 * latent_channels:
        raise CheckpointError(
            f"config.json says in_channels_ref {extra['in_channels_ref']}; DiffewS's support stream takes "
            f"{2 * latent_channels} channels (image latent then mask latent)"
        )


def load_base_parts(base: Path) -> tuple[AutoencoderKL, CLIPTextModel, object]:
    """The base pipeline's VAE, text encoder and tokenizer (its UNet is not read: the checkpoint replaces it)."""
    if not base.is_dir():
        state = "is a file, not a folder" if base.exists() else "does not exist"
        raise CheckpointError(f"--base {base} {state}; pass the SD 2.1 pipeline folder the checkpoint was trained from")
    missing = [part for part in ("vae", "text_encoder", "tokenizer") if not (base / part).is_dir()]
    if missing:
        raise CheckpointError(
            f"--base {base} has no {', '.join(p + '/' for p in missing)}: pass a diffusers pipeline folder of "
            "SD 2.1 (or the authors' converted stable-diffusion-2-1-ref8inchannels-tag4inchannels) holding "
            "vae/, text_encoder/ and tokenizer/"
        )
    loaders = {
        "vae": lambda path: AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32, local_files_only=True),
        "text_encoder": lambda path: CLIPTextModel.from_pretrained(
            path, torch_dtype=torch.float32, local_files_only=True
        ),
        "tokenizer": lambda path: AutoTokenizer.from_pretrained(path, local_files_only=True),
    }
    parts = {}
    for part, load in loaders.items():
        try:
            parts[part] = load(base / part)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"--base {base}: cannot load {part}/ ({one_line(err)[:300]})") from None
    vae, text_encoder, tokenizer = parts["vae"], parts["text_encoder"], parts["tokenizer"]
    return vae.eval(), text_encoder.eval(), tokenizer


def read_checkpoint(unet_dir: Path, latent_channels: int) -> tuple[UNet2DConditionModel, dict, dict, WeightFiles]:
    """The checkpoint's UNet on the meta device (weights not yet loaded, conv_in_ref not yet attached),
    its weights, the ignored config keys and the files read."""
    unet, extra = meta_unet(unet_dir)  # a bad config fails before gigabytes of weights are read
    state, files = read_state_dict(unet_dir)
    check_input_convs(state, unet, extra, latent_channels)
    return unet, state, extra, files


def import_diffews(
    unet: str | os.PathLike,
    base: str | os.PathLike,
    out: str | os.PathLike,
    *,
    context_tokens: int = AUTHORS_CONTEXT_TOKENS,
    resolution: int = AUTHORS_RESOLUTION,
    save_dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    command: str | None = None,
) -> Path:
    """Writes the DiffewS model folder `out` (`modeling.diffews_folder`) from an authors' checkpoint.

    Args:
        unet: the checkpoint's diffusers UNet folder (or the folder holding it as unet/).
        base: the base pipeline folder (its vae/, text_encoder/ and tokenizer/ are read).
        context_tokens: 2 (the authors' evaluation, default) or 77 (their training's padded prompt).
        resolution: the image side the model runs at (the authors': 512).
        save_dtype: weight precision on disk (float32 keeps the checkpoint's values exactly).
        overwrite: replace an existing `out` (otherwise OutputError, before anything is read).
    Raises:
        CheckpointError: a file is missing, unreadable, unsafe, or not a DiffewS UNet of this base.
    """
    if context_tokens not in EMPTY_PROMPT_TOKENS:
        raise CheckpointError(f"context tokens must be one of {EMPTY_PROMPT_TOKENS}, got {context_tokens}")
    if resolution < 8 or resolution % 8:
        raise CheckpointError(f"resolution must be a positive multiple of 8 (the VAE's factor), got {resolution}")
    unet_dir, base, out = unet_folder(Path(unet)), Path(base), Path(out)
    check_writable(out, overwrite, folder=True)  # before reading gigabytes of weights
    for source, flag in ((unet_dir, "--unet"), (base, "--base")):
        if out.resolve() == source.resolve() or out.resolve() in source.resolve().parents:
            raise OutputError(f"--out {out} holds {flag} {source}: writing it would replace the import's source")
    vae, text_encoder, tokenizer = load_base_parts(base)
    model_unet, state, extra, files = read_checkpoint(unet_dir, vae.config.latent_channels)
    width = text_encoder.config.hidden_size
    if model_unet.config.cross_attention_dim != width:
        raise CheckpointError(
            f"the UNet cross-attends to {model_unet.config.cross_attention_dim}-wide text but the base's text "
            f"encoder is {width}-wide: --base is not the model this checkpoint was fine-tuned from"
        )
    try:
        embedding = empty_text_embedding(text_encoder, tokenizer, context_tokens)
        del text_encoder
        model = DiffewsModel(model_unet, vae, embedding, resolution)
    except ValueError as err:  # e.g. a tokenizer that does not give BOS, EOS for the empty prompt
        raise CheckpointError(f"--base {base}: {one_line(err)}") from None
    try:
        load_unet_state_dict(model.unet, {k: v.float() for k, v in state.items()}, assign=True)
    except RuntimeError as err:  # strict loading: names or shapes that do not fit the config
        detail = "\n".join(str(err).splitlines()[1:]) or str(err)  # torch's first line only says "Error(s) in ..."
        raise CheckpointError(
            f"the weights in {unet_dir} do not fit its config.json: {one_line(detail)[:400]}"
        ) from None
    del state
    info = {
        "base": str(base),
        "base_path": None,
        "imported": {
            "from": "DiffewS authors' checkpoint",
            "unet": str(unet_dir.resolve()),
            "weights": files.layout,
            "sha256": files.sha256(),
            "ignored_config_keys": extra,
            "base": str(base.resolve()),
            "context_tokens": context_tokens,
            "command": command,
        },
    }
    with replacing_folder(out, overwrite=overwrite) as staging:
        save_diffews(model, staging, info, dtype=save_dtype)
        write_text(staging / "README.md", model_card({**info, "resolution": resolution}))
    return out


def model_card(config: dict) -> str:
    """README.md of an imported model folder (`config`: its diffews.json): where it came from, what was checked."""
    imported, resolution = config["imported"], config["resolution"]
    files = "\n".join(f"- `{name}`: sha256 `{digest}`" for name, digest in imported["sha256"].items())
    tokens = imported["context_tokens"]
    context = (
        "2 tokens (BOS, EOS), as the authors' evaluation pipeline tokenizes the empty prompt"
        if tokens == 2
        else "77 tokens (the empty prompt padded), as the authors' training used"
    )
    return f"""# DiffewS model imported from the authors' checkpoint

One-step few-shot segmentation (DiffewS, OI2M). The UNet weights are the authors' fine-tuned
checkpoint, unchanged; this folder adds what the toolkit needs to run it without a text encoder.

- UNet: `{imported["unet"]}` ({imported["weights"]}); `conv_in_ref` (support stream, 8 channels) and
  `conv_in` (query stream, 4 channels) checked against the base's VAE.
- Config keys of the checkpoint that diffusers' UNet does not take (ignored): `{json.dumps(imported["ignored_config_keys"])}`.
- VAE copied from `{imported["base"]}`; empty-prompt embedding computed once with its text encoder:
  {context}.
- Resolution {resolution} px, t = 1, mask read-out: VAE decode, channel mean, 0.25 x max.
- Command: `{imported["command"]}`

Source files:
{files}

Deploy it: `python -m export.build_engine --model <this folder> --out ENGINES`, then
`python -m runtime.segment --engines ENGINES ...` (docs/released-models.md). The licence of the
weights is the authors' and Stable Diffusion 2.1's (CreativeML Open RAIL++-M), not this toolkit's.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", type=Path, required=True, help="the checkpoint's unet/ folder (or checkpoint-N/)")
    parser.add_argument(
        "--base", type=Path, required=True, help="SD 2.1 pipeline folder (vae/, text_encoder/, tokenizer/)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the DiffewS model folder to write")
    parser.add_argument(
        "--context-tokens",
        type=int,
        choices=EMPTY_PROMPT_TOKENS,
        default=AUTHORS_CONTEXT_TOKENS,
        help="empty-prompt length: 2 as the authors evaluate (default), 77 as they train",
    )
    parser.add_argument("--resolution", type=int, default=AUTHORS_RESOLUTION, help="image side in pixels (512)")
    parser.add_argument("--save-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    refuse_to_overwrite([args.out], args.overwrite)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m train.import_diffews " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        out = import_diffews(
            args.unet, args.base, args.out, context_tokens=args.context_tokens, resolution=args.resolution,
            save_dtype=getattr(torch, args.save_dtype), overwrite=args.overwrite, command=command,
        )  # fmt: skip
    except (CheckpointError, OutputError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"imported: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
