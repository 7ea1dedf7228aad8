"""The deployable SLiMe graph: one crop in, the K class score maps out (one graph per embedding file).

    part_segmenter:  image (h, w, 3) uint8  ->  scores (K, h, w) float32

Inside: resize to the model resolution (antialiased bilinear as matrix products, like the
DiffewS graphs), VAE encode (posterior mean), the seeded test noise at t = 100 (a constant), the
UNet with the learned context baked in (the learned row only), the cross- and self-attention maps
as internal tensors, WAS, token threshold, background suppression and range rescaling. The UNet
layers after the last captured self-attention layer feed no output, and the exporter drops them.
Cutting patches, averaging overlaps and the argmax stay on the host (`runtime.patches`), where
the patch layout is a runtime choice.
"""

from __future__ import annotations

import torch
from torch import nn

from export.resize import resize_antialiased
from modeling.slime import SlimeModel


class PartSegmenterGraph(nn.Module):
    def __init__(self, model: SlimeModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        model = self.model
        x = image.float().permute(2, 0, 1)[None] / 127.5 - 1.0  # [1, 3, h, w]
        x = resize_antialiased(x, (model.resolution, model.resolution))
        return model.score_maps(x, (image.shape[0], image.shape[1]))[0]  # [K, h, w]
