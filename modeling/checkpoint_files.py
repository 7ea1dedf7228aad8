"""Reading weights that other code wrote: diffusers model folders (single or sharded, safetensors or
torch pickles) and loose `.pth` tensors, without ever running code from a pickle.

    state = read_state_dict(Path("checkpoint-14000/unet"))    # {name: tensor}, float as stored
    tensor = read_torch_pickle(Path("embedding_0.pth"))         # whatever tensors / containers it holds

A `.bin` / `.pth` file is a pickle, and unpickling can run arbitrary code. Every pickle here goes
through `torch.load(weights_only=True)`, whose unpickler only rebuilds tensors and plain containers;
anything else is refused with `CheckpointError` before any of it runs.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from runtime.cli import one_line
from runtime.manifest import file_sha256

WEIGHTS_NAME = "diffusion_pytorch_model"
# The names diffusers' save_pretrained writes, in the order they are looked for: safetensors first
# (diffusers' default since 0.18), a torch pickle for checkpoints saved with older versions or
# `safe_serialization=False`, each either whole or sharded with an index.
WEIGHT_LAYOUTS = (
    (f"{WEIGHTS_NAME}.safetensors.index.json", "safetensors, sharded"),
    (f"{WEIGHTS_NAME}.safetensors", "safetensors"),
    (f"{WEIGHTS_NAME}.bin.index.json", "torch pickle, sharded"),
    (f"{WEIGHTS_NAME}.bin", "torch pickle"),
)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe to read, or not the model it should be."""


@dataclass(frozen=True)
class WeightFiles:
    """Where a diffusers folder keeps its weights.

    Attributes:
        files: the files holding tensors (one, or the shards an index names), sorted.
        layout: one of WEIGHT_LAYOUTS' descriptions, e.g. "torch pickle, sharded".
        index: the index JSON of a sharded layout, else None.
    """

    files: tuple[Path, ...]
    layout: str
    index: Path | None = None

    def sha256(self) -> dict[str, str]:
        """File name -> sha256 of its bytes, for the record of where a model came from."""
        paths = self.files + ((self.index,) if self.index else ())
        return {path.name: file_sha256(path) for path in paths}


def find_weight_files(folder: Path) -> WeightFiles:
    """The weight files of diffusers model folder `folder` (the one holding config.json)."""
    for name, layout in WEIGHT_LAYOUTS:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return WeightFiles((path,), layout)
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{path} is not a diffusers shard index ({one_line(err)})") from None
        if (
            not isinstance(weight_map, dict)
            or not weight_map
            or not all(isinstance(v, str) and Path(v).name == v for v in weight_map.values())
        ):
            raise CheckpointError(
                f"{path} is not a diffusers shard index: its weight_map must map tensor names to shard file names"
            )
        shards = tuple(sorted({folder / shard for shard in weight_map.values()}))
        missing = [shard.name for shard in shards if not shard.is_file()]
        if missing:
            raise CheckpointError(
                f"{path} names {len(shards)} shards but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing from {folder}; copy every shard"
            )
        return WeightFiles(shards, layout, path)
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise CheckpointError(
        f"{folder} holds no diffusers weights: expected {WEIGHTS_NAME}.safetensors or .bin (or a sharded "
        f"index of either); found {', '.join(present) or 'nothing'}"
    )


def unreadable(path: Path, err: Exception) -> CheckpointError:
    """The error for a weight file that cannot be read, naming the common cause of a git-lfs pointer."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        return CheckpointError(f"{path} is a git-lfs pointer, not the weights; fetch them with `git lfs pull`")
    return CheckpointError(f"{path} is not a readable {path.suffix.lstrip('.')} weight file ({one_line(err)[:300]})")


def read_torch_pickle(path: Path) -> object:
    """The tensors / containers pickled in `path`, read on the CPU with `torch.load(weights_only=True)`.

    Raises:
        CheckpointError: the file is missing or not a torch pickle, or it asks to build an object
            other than tensors and plain containers (which could run code): nothing of it runs.
    """
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        # mmap (zip-format files, torch's default since 1.6): tensors are read from the file as they
        # are used instead of being copied into memory first, which would hold the weights twice.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        # torch names the global a pickle wanted, e.g. "unsupported GLOBAL posix.system whose module
        # posix is blocked". Any other unpickling failure is a damaged or foreign file, not an attack.
        wanted = re.search(r"GLOBAL (\S+)", str(err))
        if wanted is None:
            raise unreadable(path, err) from None
        raise CheckpointError(
            f"refused to read {path}: the pickle asks for {wanted.group(1)}, not only tensors, and unpickling it "
            "could run code. Only tensors and plain containers are read; if you trust the file, convert it "
            "to safetensors in a separate step and pass that"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise unreadable(path, err) from None


def _read_one(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise unreadable(path, err) from None
    state = read_torch_pickle(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def read_state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], WeightFiles]:
    """Every tensor of diffusers model folder `folder`, shards merged, and where they came from."""
    weights = find_weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    for path in weights.files:
        part = _read_one(path)
        repeated = sorted(set(part) & set(state))
        if repeated:
            raise CheckpointError(f"{path} repeats tensor {repeated[0]} of another shard; the shards do not fit")
        state.update(part)
    return state, weights
