"""A small decoder distilled from the VAE decoder on DiffewS mask latents: the fast mask read-out.

DiffewS decodes its predicted mask latent with the full VAE decoder (2.5 TFLOP at 512 px, 42 % of
a query in the runtime) only to threshold the channel mean of a blurry white-on-black image. This
network maps the same (4, h, w) latent to the same decoded image (3, 8h, 8w) in [-1, 1], so the
unchanged `MaskReadout` (relative or absolute threshold) applies to its output. At 512 px it costs
about 3 GFLOP instead of 2,500.

    decoder = MaskDecoder()                     # or load_mask_decoder(folder / "mask_decoder")
    decoded = decoder(mask_latents)             # (B, 4, h, w) scaled latents -> (B, 3, 8h, 8w)

Stored in a DiffewS model folder as `mask_decoder/config.json` + `mask_decoder/model.safetensors`;
trained by `python -m train.mask_decoder`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from runtime.files import replacing_folder

FOLDER = "mask_decoder"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class MaskDecoderConfig:
    """Widths: `latent_channels` at the latent resolution, then one width per x2 upsampling stage."""

    in_channels: int = 4
    latent_channels: int = 64
    res_blocks: int = 2
    up_channels: tuple[int, ...] = (32, 16, 16)  # three x2 stages: the VAE's factor 8


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x + self.body(x))


class MaskDecoder(nn.Module):
    """(B, 4, h, w) scaled mask latents -> (B, 3, 8h, 8w) decoded mask image in [-1, 1]."""

    def __init__(self, config: MaskDecoderConfig | None = None):
        super().__init__()
        self.config = config or MaskDecoderConfig()
        c = self.config
        layers: list[nn.Module] = [nn.Conv2d(c.in_channels, c.latent_channels, 3, padding=1), nn.SiLU()]
        layers += [_ResBlock(c.latent_channels) for _ in range(c.res_blocks)]
        width = c.latent_channels
        for out in c.up_channels:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, out, 3, padding=1), nn.SiLU()]
            width = out
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(latents))


def save_mask_decoder(decoder: MaskDecoder, folder: Path, info: dict | None = None) -> Path:
    """Writes `folder/config.json` (architecture + `info`, e.g. how it was trained) and the weights."""
    folder = Path(folder)
    state = {k: v.detach().float().contiguous() for k, v in decoder.state_dict().items()}
    with replacing_folder(folder, overwrite=True) as work:  # swapped in whole: never half old, half new
        (work / "config.json").write_text(
            json.dumps({"architecture": asdict(decoder.config), **(info or {})}, indent=1)
        )
        save_file(state, str(work / WEIGHTS), metadata={"format": "pt"})
    return folder


def load_mask_decoder(folder: Path) -> MaskDecoder:
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{folder} holds no mask decoder (config.json + {WEIGHTS}); train one with python -m train.mask_decoder"
        )
    architecture = json.loads((folder / "config.json").read_text())["architecture"]
    architecture["up_channels"] = tuple(architecture["up_channels"])
    decoder = MaskDecoder(MaskDecoderConfig(**architecture))
    decoder.load_state_dict(load_file(str(folder / WEIGHTS)))
    return decoder.eval()
