"""SLiMe's learned embeddings as one safetensors file, and the model they were optimised on.

    embedding = SlimeEmbedding.from_model(model, class_names, base="synth", base_hash=..., info={...})
    embedding.save("car.safetensors")
    model = load_slime("car.safetensors")            # rebuilds the base, checks its hash

File contents: tensors `context` (1, 77, D), the text context with rows 1..K-1 learned, and
`uncond` (1, 77, D), the empty prompt's (the SD regulariser's; kept so optimisation can resume);
metadata (strings): `format`, `class_names` (JSON, background first), `base` (preset name or
folder), `base_hash` (sha256 of the UNet and VAE weights), `layers` (JSON), `settings` (JSON, the
test-time settings) and `info` (JSON, how it was trained).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from modeling.slime import SlimeModel, SlimeSettings
from modeling.slime_attention import SlimeLayers
from runtime.files import replacing_file

FORMAT = "slime-embedding/1"


class EmbeddingFileError(ValueError):
    """An embedding file is unreadable, of another format, or does not fit the base model."""


def weights_hash(*modules: torch.nn.Module) -> str:
    """sha256 over the modules' parameters and buffers (names and bytes, in state-dict order)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().cpu().float().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class SlimeEmbedding:
    context: torch.Tensor  # [1, 77, D]
    uncond: torch.Tensor  # [1, 77, D]
    class_names: list[str]
    base: str
    base_hash: str
    layers: SlimeLayers
    settings: SlimeSettings
    resolution: int
    info: dict = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: SlimeModel, class_names: list[str], base: str, base_hash: str, info: dict):
        if len(class_names) != model.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model of {model.num_classes} classes")
        with torch.no_grad():
            context = model.context().detach().clone()
        return cls(
            context, model.uncond.clone(), list(class_names), base, base_hash, model.layers, model.settings,
            model.resolution, dict(info),
        )  # fmt: skip

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        path = Path(path)
        metadata = {
            "format": FORMAT,
            "class_names": json.dumps(self.class_names),
            "base": self.base,
            "base_hash": self.base_hash,
            "layers": json.dumps(self.layers.to_json()),
            "settings": json.dumps(self.settings.to_json()),
            "resolution": str(self.resolution),
            "info": json.dumps(self.info),
        }
        tensors = {"context": self.context.float().contiguous(), "uncond": self.uncond.float().contiguous()}
        with replacing_file(path, overwrite) as tmp:  # a failed write keeps an existing file intact
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SlimeEmbedding:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such embedding file: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise EmbeddingFileError(f"{path} is not a readable safetensors file ({err})") from err
        if metadata.get("format") != FORMAT:
            raise EmbeddingFileError(
                f"{path} is not a SLiMe embedding file of format {FORMAT} (it says {metadata.get('format')!r}); "
                "make one with python -m train.slime"
            )
        try:
            embedding = cls(
                context=tensors["context"],
                uncond=tensors["uncond"],
                class_names=json.loads(metadata["class_names"]),
                base=metadata["base"],
                base_hash=metadata["base_hash"],
                layers=SlimeLayers.from_json(json.loads(metadata["layers"])),
                settings=SlimeSettings(**json.loads(metadata["settings"])),
                resolution=int(metadata["resolution"]),
                info=json.loads(metadata.get("info", "{}")),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise EmbeddingFileError(
                f"{path} lacks or misformats {err}; re-create it with python -m train.slime"
            ) from err
        if embedding.context.shape != embedding.uncond.shape or embedding.context.ndim != 3:
            raise EmbeddingFileError(f"{path}: context {tuple(embedding.context.shape)} and uncond must be (1, 77, D)")
        return embedding

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build_model(self, components) -> SlimeModel:
        """The SlimeModel on `components` (the base this file names); raises EmbeddingFileError on a mismatch."""
        width = components.unet.config.cross_attention_dim
        if self.context.shape[-1] != width:
            raise EmbeddingFileError(
                f"the embeddings are {self.context.shape[-1]}-wide but the base's UNet takes {width}; "
                f"they were optimised on {self.base!r}"
            )
        found = weights_hash(components.unet, components.vae)
        if found != self.base_hash:
            raise EmbeddingFileError(
                f"the embeddings were optimised on base {self.base!r} with weights hash {self.base_hash[:12]}, "
                f"but the given base hashes {found[:12]}; pass the same base model (--base / --base-path)"
            )
        return SlimeModel(
            components.vae, components.unet, components.scheduler_config, self.context, self.uncond,
            self.num_classes, self.layers, self.resolution, self.settings,
        ).eval()  # fmt: skip


def load_slime(
    path: str | os.PathLike, base_path: str | os.PathLike | None = None
) -> tuple[SlimeModel, SlimeEmbedding]:
    """The embedding file at `path` on its base model (a preset rebuilt, or `base_path` for sd21-base)."""
    from modeling.presets import build_model

    embedding = SlimeEmbedding.load(path)
    components = build_model(embedding.base, path=base_path)
    return embedding.build_model(components), embedding
