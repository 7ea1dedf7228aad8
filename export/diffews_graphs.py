"""The two deployable DiffewS graphs, as torch modules around a `DiffewsModel`, cut at the K/V bank.

    support_encoder:  image (H, W, 3) uint8, mask (H, W) uint8
                      -> key_i, value_i (1, N_i, C_i) float32 for every fused layer i
    query_segmenter:  image (H, W, 3) uint8, threshold () float32, key_i, value_i (S, N_i, C_i)
                      -> mask (H, W) uint8 in {0, 1}

Pre- and post-processing live inside the graphs (any input size, resize to the model resolution,
VAE encode, mask read-out, resize back), so a host only moves uint8 pixels and bank tensors.
A shot's bank has a leading axis of 1; an n-shot bank is the concatenation of n single-shot
banks along that axis, which the query graph flattens into the token axis (query tokens
first, then shot after shot: the order `KVBank.concat` uses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export.resize import resize_antialiased
from modeling.diffews import TIMESTEP, DiffewsModel
from modeling.kv_fusion import KVBank


def _image_to_model(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, R, R) in [-1, 1]; bilinear with antialiasing, as `DiffewsModel` resizes.

    As matrix products rather than an antialiased ONNX `Resize`, which TensorRT cannot parse.
    """
    x = image.float().permute(2, 0, 1)[None] / 127.5 - 1.0  # float first: TensorRT keeps uint8 at the edges only
    return resize_antialiased(x, (resolution, resolution))


def _mask_to_model(mask: torch.Tensor, resolution: int) -> torch.Tensor:
    """(H, W) uint8, foreground > 0 -> (1, 3, R, R) white on black in [-1, 1] (nearest resize)."""
    m = (mask.float() > 0).float()[None, None] * 2.0 - 1.0
    m = F.interpolate(m, size=(resolution, resolution), mode="nearest")
    return m.expand(-1, 3, -1, -1)


class SupportEncoder(nn.Module):
    """One support image and its mask -> that shot's K/V bank (keys of every layer, then values)."""

    def __init__(self, model: DiffewsModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model = self.model
        z_image = model.encode(_image_to_model(image, model.resolution))
        z_mask = model.encode(_mask_to_model(mask, model.resolution))
        # The whole support stream runs (an exception cannot stop a traced graph early); the
        # layers after the last self-attention feed no output and the exporter drops them.
        bank = model.support_bank(z_image[:, None], z_mask[:, None], stop_early=False)
        names = model.fusion.layer_names
        return tuple(bank.keys[n] for n in names) + tuple(bank.values[n] for n in names)


class QuerySegmenter(nn.Module):
    """A query image, the read-out threshold and an S-shot bank -> the query's uint8 mask at its own size.

    Args:
        readout_decoder: what decodes the mask latent: "vae", "head" or "fast" (`DiffewsModel.decode_mask_images`).
    """

    def __init__(self, model: DiffewsModel, readout_decoder: str = "vae"):
        super().__init__()
        self.model, self.readout_decoder = model, readout_decoder

    def forward(self, image: torch.Tensor, threshold: torch.Tensor, *bank: torch.Tensor) -> torch.Tensor:
        model = self.model
        names = model.fusion.layer_names
        if len(bank) != 2 * len(names):
            raise ValueError(f"expected {2 * len(names)} bank tensors (keys then values), got {len(bank)}")
        tokens = [t.reshape(1, -1, t.shape[-1]) for t in bank]  # (S, N, C) -> (1, S*N, C): shot after shot
        kv = KVBank(dict(zip(names, tokens[: len(names)])), dict(zip(names, tokens[len(names) :])), bank[0].shape[0])
        z_query = model.encode(_image_to_model(image, model.resolution))
        with model.fusion.reading(kv):
            output = model.unet(z_query, TIMESTEP, encoder_hidden_states=model.empty_embedding).sample
        decoded = model.decode_mask_images(-output, self.readout_decoder)
        x = (decoded.clamp(-1, 1) + 1) / 2  # [1, 3, R, R] in [0, 1]
        if model.readout.relative is not None:
            cut = threshold * x.max()
        else:
            cut = threshold
        mask = (x.mean(dim=1, keepdim=True) > cut).float()  # [1, 1, R, R]
        mask = F.interpolate(mask, size=(image.shape[0], image.shape[1]), mode="nearest")
        return mask[0, 0].to(torch.uint8)
