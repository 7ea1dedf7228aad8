"""The VAE decoder run to half resolution, then a small learned head: the "head" mask read-out.

At 512 px the SD VAE decoder spends about 35 % of its 2.5 TFLOP in its last stretch: the
upsampling conv into full resolution and the last up block, both at 512 x 512 with 256 / 128
channels. The distilled `MaskDecoder` replaces the whole decoder and misses edges by a fraction of
a pixel; this read-out keeps the VAE's own computation up to the half-resolution features, where
the mask's edges are already placed, and learns only the last step:

    latents (B, 4, h, w) -> VAE decoder up to the resnets of its second-to-last up block
        -> features (B, C, 4h, 4w)                               C = 256 for SD 2.1
        -> MaskHead: conv 3x3 C->width, GroupNorm, SiLU, nearest x2,
           conv 3x3 width->width, SiLU, conv 3x3 width->3, tanh
        -> decoded mask image (B, 3, 8h, 8w) in [-1, 1]

so the unchanged `MaskReadout` applies to its output. Only the head is trained (by
`python -m train.mask_decoder --kind head`) and stored, in `mask_head/` of a DiffewS model folder;
the VAE part is the model's own.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from torch import nn

from runtime.files import replacing_folder

FOLDER = "mask_head"
WEIGHTS = "model.safetensors"


def half_resolution_features(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """(B, 4, h, w) scaled latents -> (B, C, 4h, 4w): the VAE decoder's state before its last upsampling.

    Exactly `vae.decode` up to there: post-quant conv, conv_in, mid block, every up block but the
    last two, and the resnets (not the upsampler) of the second-to-last.
    """
    z = latents / vae.config.scaling_factor
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    decoder = vae.decoder
    h = decoder.mid_block(decoder.conv_in(z), None)
    for block in decoder.up_blocks[:-2]:
        h = block(h, None)
    for resnet in decoder.up_blocks[-2].resnets:
        h = resnet(h, temb=None)
    return h


def half_resolution_channels(vae: AutoencoderKL) -> int:
    """C of `half_resolution_features`: the output width of the second-to-last up block."""
    return vae.decoder.up_blocks[-2].resnets[-1].out_channels


@dataclass(frozen=True)
class MaskHeadConfig:
    in_channels: int  # the VAE's `half_resolution_channels`
    width: int = 32
    groups: int = 8


class MaskHead(nn.Module):
    """(B, C, 4h, 4w) half-resolution VAE features -> (B, 3, 8h, 8w) decoded mask image in [-1, 1]."""

    def __init__(self, config: MaskHeadConfig):
        super().__init__()
        self.config = c = config
        self.net = nn.Sequential(
            nn.Conv2d(c.in_channels, c.width, 3, padding=1),
            nn.GroupNorm(c.groups, c.width),  # the VAE's own tail normalises; its feature scale varies by image
            nn.SiLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c.width, c.width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c.width, 3, 3, padding=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(features))


class HeadReadout(nn.Module):
    """(B, 4, h, w) scaled mask latents -> (B, 3, 8h, 8w): the VAE decoder to half resolution, then `head`.

    Holds the model's VAE by reference (it is frozen and shared); `head` is the only trained part.
    """

    def __init__(self, vae: AutoencoderKL, head: MaskHead):
        super().__init__()
        if head.config.in_channels != half_resolution_channels(vae):
            raise ValueError(
                f"the mask head takes {head.config.in_channels} channels but this VAE's half-resolution "
                f"features have {half_resolution_channels(vae)}: it was trained for another VAE; "
                "retrain it with python -m train.mask_decoder --kind head"
            )
        self.head = head
        self._vae = [vae]  # a list keeps the shared VAE out of this module's parameters and state dict

    @property
    def vae(self) -> AutoencoderKL:
        return self._vae[0]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.head(half_resolution_features(self.vae, latents))


def save_mask_head(head: MaskHead, folder: Path, info: dict | None = None) -> Path:
    """Writes `folder/config.json` (architecture + `info`, e.g. how it was trained) and the head's weights."""
    folder = Path(folder)
    state = {k: v.detach().float().contiguous() for k, v in head.state_dict().items()}
    with replacing_folder(folder, overwrite=True) as work:  # swapped in whole: never half old, half new
        (work / "config.json").write_text(json.dumps({"architecture": asdict(head.config), **(info or {})}, indent=1))
        save_file(state, str(work / WEIGHTS), metadata={"format": "pt"})
    return folder


def load_mask_head(folder: Path, vae: AutoencoderKL) -> HeadReadout:
    """The stored head on top of `vae` (the model's own)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{folder} holds no mask head (config.json + {WEIGHTS}); train one with "
            "python -m train.mask_decoder --kind head"
        )
    head = MaskHead(MaskHeadConfig(**json.loads((folder / "config.json").read_text())["architecture"]))
    head.load_state_dict(load_file(str(folder / WEIGHTS)))
    return HeadReadout(vae, head.eval())
