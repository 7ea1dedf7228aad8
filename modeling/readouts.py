"""The DiffewS mask read-outs: a decoded mask image -> a binary mask, and the learned networks that decode it.

The UNet predicts a mask latent (4, h, w); a read-out decodes it to a mask image (3, 8h, 8w) in
[-1, 1], then `MaskThreshold` (relative or absolute) marks the foreground. The three decoders,
named as the manifest, the CLI and the model folder name them (`runtime.sections.READOUTS`):

| read-out | what decodes the mask latent | stored in |
| --- | --- | --- |
| `vae` | the method's full VAE decoder (2.5 TFLOP at 512 px) | the model's `vae/` |
| `mask_head` | the VAE decoder to half resolution, then a small learned head (`MaskHeadReadout`): about 35 % less decoder work, the VAE's own edges | `mask_head/` |
| `mask_decoder` | a small decoder distilled from the VAE decoder (`MaskDecoder`): about 3 GFLOP at 512 px, the fastest, less faithful edges | `mask_decoder/` |

The learned ones are trained by `python -m train.mask_decoder --kind mask_head|mask_decoder`
and stored as `config.json` (architecture and how it was trained) plus `model.safetensors`.

The head's reasoning: at 512 px the SD VAE decoder spends about 35 % of its work in its last
stretch (the upsampling conv into full resolution and the last up block, at 512 x 512 with
256 / 128 channels); the mask's edges are already placed at half resolution, so only the last
step is learned:

    latents (B, 4, h, w) -> VAE decoder up to the resnets of its second-to-last up block
        -> features (B, C, 4h, 4w)                               C = 256 for SD 2.1
        -> MaskHead: conv 3x3 C->width, GroupNorm, SiLU, nearest x2,
           conv 3x3 width->width, SiLU, conv 3x3 width->3, tanh
        -> decoded mask image (B, 3, 8h, 8w) in [-1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import nn

from modeling.network_files import read_network_files, save_network
from runtime.sections import READOUTS

LEARNED_READOUTS = READOUTS[1:]  # "mask_head", "mask_decoder": the folder each is stored in


@dataclass
class MaskThreshold:
    """Decoded mask image -> binary mask: the last step of every read-out.

    Relative (default, the authors'): foreground where the channel mean in [0, 1] exceeds
    `relative` x the image's maximum (taken over all three channels). Note that a prediction that is
    black everywhere still marks its brightest pixels. Absolute (`absolute` set, `relative`
    None): foreground where the channel mean in [0, 1] exceeds `absolute`.
    """

    relative: float | None = 0.25
    absolute: float | None = None

    def __post_init__(self):
        if (self.relative is None) == (self.absolute is None):
            raise ValueError("set exactly one of relative and absolute")

    @property
    def mode(self) -> str:
        """ "relative" or "absolute": how the manifest's read-out names it."""
        return "relative" if self.relative is not None else "absolute"

    @property
    def level(self) -> float:
        """The threshold value of that mode (the query graph's `threshold` input)."""
        return float(self.relative if self.relative is not None else self.absolute)

    def __call__(self, decoded: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H, W) bool."""
        x = (decoded.float().clamp(-1, 1) + 1) / 2
        if self.relative is not None:
            threshold = self.relative * x.flatten(1).max(dim=1).values[:, None, None]
        else:
            threshold = torch.full((x.shape[0], 1, 1), self.absolute, dtype=x.dtype, device=x.device)
        return x.mean(dim=1) > threshold


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


class MaskHeadReadout(nn.Module):
    """(B, 4, h, w) scaled mask latents -> (B, 3, 8h, 8w): the VAE decoder to half resolution, then `head`.

    Holds the model's VAE by reference (it is frozen and shared); `head` is the only trained part.
    """

    def __init__(self, vae: AutoencoderKL, head: MaskHead):
        super().__init__()
        if head.config.in_channels != half_resolution_channels(vae):
            raise ValueError(
                f"the mask head takes {head.config.in_channels} channels but this VAE's half-resolution "
                f"features have {half_resolution_channels(vae)}: it was trained for another VAE; "
                "retrain it with python -m train.mask_decoder --kind mask_head"
            )
        self.head = head
        self._vae = [vae]  # a list keeps the shared VAE out of this module's parameters and state dict

    @property
    def vae(self) -> AutoencoderKL:
        return self._vae[0]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.head(half_resolution_features(self.vae, latents))


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


def save_readout(network: MaskHead | MaskDecoder, folder: Path, info: dict | None = None) -> Path:
    """Writes the read-out's architecture + `info` (e.g. how it was trained) and its weights into `folder`."""
    return save_network(network, folder, info)


def load_readout(kind: str, folder: Path, vae: AutoencoderKL) -> MaskHeadReadout | MaskDecoder:
    """The stored read-out network `kind` ("mask_head" on top of `vae`, the model's own, or "mask_decoder")."""
    if kind not in LEARNED_READOUTS:
        raise ValueError(f"unknown learned read-out {kind!r}; choose one of {', '.join(LEARNED_READOUTS)}")
    architecture, state = read_network_files(folder, kind, f"python -m train.mask_decoder --model DIR --kind {kind}")
    if kind == "mask_head":
        network = MaskHead(MaskHeadConfig(**architecture))
    else:
        network = MaskDecoder(MaskDecoderConfig(**{**architecture, "up_channels": tuple(architecture["up_channels"])}))
    network.load_state_dict(state)
    network.eval()
    return MaskHeadReadout(vae, network) if kind == "mask_head" else network
