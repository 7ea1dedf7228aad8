"""Imports SLiMe embeddings optimised by the authors' code into this toolkit's embedding file.

    python -m train.import_slime --embeddings checkpoints/version_0 --classes background,head,body,leg,tail \\
        --base sd21-base --base-path /models/sd-2-1-base --out horse.safetensors
    python -m export.build_engine --slime horse.safetensors --base-path /models/sd-2-1-base --out engines/horse
    python -m runtime.parts --engines engines/horse --image a.jpg b.jpg --out parts/

What the authors' code writes (METHOD_SPEC 2.2): `embedding_{i}.pth`, i = 0..K-2, one torch tensor
(1, 1, D) per foreground class: the learned text-encoder output rows 1..K-1 of the prompt "part" x K
(their `--text_prompt` replaces it; pass the same `--text-prompt` here). Nothing beside them records
the class names, the base or the layers, so `--classes` names the K classes (background first; K =
files + 1) and `--base` says which model they were optimised on. The fixed rows (row 0 = background,
the rest of the prompt, the unconditional context) are recomputed here with the base's text encoder,
as their code does at test time. The layers are the spec's selection for that base.

Channel order: the authors' code feeds SD BGR images since its commit 0df6cc5 (2023-09-28), so
embeddings trained with it expect BGR input: `--channel-order bgr` is the default here. Pass
`--channel-order rgb` for embeddings trained before that commit or with this toolkit's RGB.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from modeling.checkpoint_files import CheckpointError, read_torch_pickle
from modeling.presets import ModelFolderError, build_model
from modeling.slime import SlimeModel, SlimeSettings, default_token_threshold
from modeling.slime_embedding import SlimeEmbedding, weights_hash
from runtime.cli import refuse_to_overwrite
from runtime.files import OutputError, check_writable
from runtime.manifest import file_sha256
from train.slime import check_class_names, class_list

EMBEDDING_FILE = re.compile(r"embedding_(0|[1-9]\d*)\.pth")  # as written by f"embedding_{i}.pth": no leading zeros
CHANNEL_ORDERS = ("bgr", "rgb")


def embedding_files(folder: Path) -> list[Path]:
    """embedding_0.pth .. embedding_{n-1}.pth of `folder`, in class order; raises CheckpointError on gaps or strays."""
    if not folder.is_dir():
        raise CheckpointError(f"--embeddings {folder} is not a folder; pass the folder holding embedding_0.pth ...")
    pth = sorted(folder.glob("*.pth"))
    strays = [p.name for p in pth if not EMBEDDING_FILE.fullmatch(p.name)]
    if strays:
        # The authors' loader counts every .pth file as a class: a stray one would shift K.
        raise CheckpointError(
            f"{folder} holds .pth files that are not embedding_<i>.pth ({', '.join(strays)}); "
            "move them out, the authors' code would count them as classes too"
        )
    by_index = {int(EMBEDDING_FILE.fullmatch(p.name).group(1)): p for p in pth}
    if not by_index:
        raise CheckpointError(f"{folder} holds no embedding_<i>.pth files")
    gaps = sorted(set(range(len(by_index))) - set(by_index))
    if gaps:
        raise CheckpointError(
            f"{folder} has {len(by_index)} embedding files but no embedding_{gaps[0]}.pth; "
            f"the authors' code writes embedding_0.pth .. embedding_{len(by_index) - 1}.pth"
        )
    return [by_index[i] for i in range(len(by_index))]


def check_class_count(files: list[Path], class_names: list[str]) -> None:
    parts = len(files)
    if len(class_names) != parts + 1:
        raise CheckpointError(
            f"--classes names {len(class_names)} classes ({', '.join(class_names)}) but there are {parts} "
            f"embedding files, i.e. {parts} parts + the background = {parts + 1} classes; name the "
            "background first and then one class per embedding_<i>.pth, in file order"
        )


def read_part_rows(files: list[Path], width: int) -> torch.Tensor:
    """(K-1, width) float32: one learned text row per embedding file."""
    rows = []
    for path in files:
        tensor = read_torch_pickle(path)
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path} holds a {type(tensor).__name__}, not the (1, 1, {width}) embedding tensor")
        if tensor.numel() != width or tensor.squeeze().shape != (width,):
            raise CheckpointError(
                f"{path} is a {tuple(tensor.shape)} tensor, but the base's text encoder is {width} wide "
                f"(each embedding is (1, 1, {width})): these were optimised on another base"
            )
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path} holds NaN or infinite values")
        rows.append(tensor.detach().reshape(width).float())
    return torch.stack(rows)


def import_slime(
    embeddings: Path,
    class_names: list[str],
    out: Path,
    *,
    base: str = "sd21-base",
    base_path: str | None = None,
    channel_order: str = "bgr",
    text_prompt: str | None = None,
    token_threshold: float | None = None,
    suppress_first_kept: bool = False,
    overwrite: bool = False,
    command: str | None = None,
) -> Path:
    """Writes this toolkit's embedding file `out` (`modeling.slime_embedding`) from the authors' .pth files.

    Args:
        embeddings: the folder holding embedding_0.pth .. embedding_{K-2}.pth.
        class_names: K names, background first.
        base: the base it was optimised on: a preset (sd21-base needs `base_path`) or a pipeline folder.
        channel_order: "bgr" (the authors' code since 2023-09-28, default) or "rgb".
        text_prompt: the prompt they trained with, if not "part" x K (their --text_prompt).
        token_threshold: test-time class threshold (default: the base's, 0.2 for SD).
        suppress_first_kept: the released code's test-time quirk (see `SlimeSettings`).
    Raises:
        CheckpointError: missing, unsafe or misshapen files, or a count that does not match the classes.
        ModelFolderError: the base cannot be loaded.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise CheckpointError(f"channel order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    try:
        check_class_names(list(class_names))
    except ValueError as err:
        raise CheckpointError(f"class names: {err}") from None
    check_writable(out, overwrite)
    files = embedding_files(embeddings)
    check_class_count(files, class_names)
    try:
        components = build_model(base, path=base_path)
    except KeyError as err:  # an unknown preset: its message is the one argument
        raise CheckpointError(f"--base: {err.args[0]}") from None
    rows = read_part_rows(files, components.text_encoder.config.hidden_size)
    threshold = default_token_threshold(components.preset) if token_threshold is None else token_threshold
    settings = SlimeSettings(threshold, bgr=channel_order == "bgr", suppress_first_kept=suppress_first_kept)
    try:
        model = SlimeModel.from_base(components, class_names, settings, prompt=text_prompt)
    except ValueError as err:  # e.g. the base's UNet lacks the spec's layers
        raise CheckpointError(f"base {base!r}: {err}") from None
    with torch.no_grad():
        model.learned.copy_(rows)
    info = {
        "imported": {
            "from": "SLiMe authors' embedding_<i>.pth",
            "embeddings": str(embeddings.resolve()),
            "sha256": {p.name: file_sha256(p) for p in files},
            "channel_order": channel_order,
            "text_prompt": text_prompt,
            "command": command,
        }
    }
    embedding = SlimeEmbedding.from_model(
        model, class_names, components.preset, weights_hash(components.unet, components.vae), info
    )
    return embedding.save(out, overwrite=overwrite)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", type=Path, required=True, help="folder of embedding_0.pth ...")
    parser.add_argument(
        "--classes", type=class_list, required=True, help="comma-separated class names, background first"
    )
    parser.add_argument("--base", default="sd21-base", help="preset (sd21-base, synth, ...) or pipeline folder")
    parser.add_argument("--base-path", default=None, help="local weights folder of presets that need one")
    parser.add_argument("--out", type=Path, required=True, help="the embedding file to write (.safetensors)")
    parser.add_argument(
        "--channel-order", choices=CHANNEL_ORDERS, default="bgr",
        help="what the embeddings were trained on: bgr (the authors' code since 2023-09-28, default) or rgb",
    )  # fmt: skip
    parser.add_argument("--text-prompt", default=None, help="their --text_prompt, if they trained with one")
    parser.add_argument("--token-threshold", type=float, default=None, help="test time (default: the base's, SD 0.2)")
    parser.add_argument(
        "--suppress-first-kept", action="store_true", help="the released code's test-time quirk (see train.slime)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    args.class_names = args.classes
    refuse_to_overwrite([args.out], args.overwrite)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m train.import_slime " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        out = import_slime(
            args.embeddings, args.class_names, args.out, base=args.base, base_path=args.base_path,
            channel_order=args.channel_order, text_prompt=args.text_prompt, token_threshold=args.token_threshold,
            suppress_first_kept=args.suppress_first_kept, overwrite=args.overwrite, command=command,
        )  # fmt: skip
    except (CheckpointError, ModelFolderError, OutputError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"imported: {out} ({len(args.class_names)} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
