"""What encodes the query image into the UNet's latent: the VAE encoder, or a distilled one.

| query encoder | what it is | stored in |
| --- | --- | --- |
| `vae` | the method's own: the VAE encoder's posterior mean (about 1.1 TFLOP at 512 px for SD 2.1) | the model's `vae/` |
| `distilled` | `DistilledEncoder`, trained to give the same latent (`train.query_encoder`) | `query_encoder/` |

The distilled encoder is TAESD's encoder (diffusers' `EncoderTiny`: a stride-2 conv and a few
residual conv blocks per level, no attention, no normalisation) with its width scaled to the
VAE's, distilled the way TAESD was: regress the VAE's scaled posterior mean of the same image.
Only the query uses it. The support stays on the VAE encoder: it is encoded once per support
set, so a cheaper encoder there would cost agreement and save nothing per query.

    image (B, 3, R, R) in [-1, 1]
      -> conv 3x3 3->w, blocks[0] residual blocks           (R)
      -> [conv 3x3 stride 2 w->w, blocks[i] residual blocks] (R/2, R/4, R/8)
      -> conv 3x3 w->4                                       (B, 4, R/8, R/8) scaled latents
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import EncoderTiny
from torch import nn

from modeling.network_files import read_network_files, save_network
from runtime.sections import QUERY_ENCODERS

__all__ = ["QUERY_ENCODERS", "DistilledEncoder", "DistilledEncoderConfig", "load_query_encoder", "save_query_encoder"]
FOLDER = "query_encoder"  # in the model folder
TRAIN_COMMAND = "python -m train.query_encoder --model DIR"


@dataclass(frozen=True)
class DistilledEncoderConfig:
    """`width` channels at every level; `blocks[i]` residual blocks at level i (level 0: full resolution)."""

    latent_channels: int = 4
    width: int = 64
    blocks: tuple[int, ...] = (1, 3, 3, 3)  # TAESD's; len(blocks) - 1 halvings: the VAE's factor 8

    @classmethod
    def for_vae(cls, vae: AutoencoderKL) -> DistilledEncoderConfig:
        """TAESD's shape at half the width of the VAE's first level (64 for SD 2.1's 128)."""
        levels = len(vae.config.block_out_channels)
        return cls(
            vae.config.latent_channels, max(8, vae.config.block_out_channels[0] // 2), (1,) + (3,) * (levels - 1)
        )


class DistilledEncoder(nn.Module):
    """(B, 3, R, R) image in [-1, 1] -> (B, latent_channels, R/8, R/8): the VAE's scaled latent, approximated."""

    def __init__(self, config: DistilledEncoderConfig):
        super().__init__()
        self.config = config
        self.encoder = EncoderTiny(
            3, config.latent_channels, tuple(config.blocks), (config.width,) * len(config.blocks), "relu"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)  # EncoderTiny maps [-1, 1] to [0, 1] itself


def save_query_encoder(network: DistilledEncoder, folder: Path, info: dict | None = None) -> Path:
    """Writes the encoder's architecture + `info` (how it was trained) and its weights into `folder`."""
    return save_network(network, folder, info)


def load_query_encoder(folder: Path, vae: AutoencoderKL) -> DistilledEncoder:
    """The distilled encoder stored in `folder`, checked against the model's VAE (same latent channels)."""
    architecture, state = read_network_files(folder, "distilled query encoder", TRAIN_COMMAND)
    config = DistilledEncoderConfig(**{**architecture, "blocks": tuple(architecture["blocks"])})
    if config.latent_channels != vae.config.latent_channels:
        raise ValueError(
            f"{folder}: the distilled encoder gives {config.latent_channels} latent channels, this model's VAE "
            f"{vae.config.latent_channels}: it was trained for another model; retrain it with {TRAIN_COMMAND}"
        )
    network = DistilledEncoder(config)
    network.load_state_dict(state)
    return network.eval()
