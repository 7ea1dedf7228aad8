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

from export.resize import image_to_model
from modeling.slime import SlimeModel
from runtime.contract import GraphSpec, Tolerance, pixel_spec
from runtime.sections import PART_SEGMENTER

PART_PRECISIONS = {"fp32": Tolerance(max_rel_l2=1e-3), "fp16": Tolerance(max_rel_l2=5e-2)}


class PartSegmenterGraph(nn.Module):
    def __init__(self, model: SlimeModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        model = self.model
        x = image_to_model(image, model.resolution)  # [1, 3, R, R]
        return model.score_maps(x, (image.shape[0], image.shape[1]))[0]  # [K, h, w]


def slime_graph_spec(
    num_classes: int, min_side: int = 32, opt_side: int = 512, max_side: int = 4096, precision: str = "fp32"
) -> GraphSpec:
    """The `part_segmenter` descriptor: an RGB crop (h, w, 3) uint8 -> K score maps (K, h, w) float32."""
    if precision not in PART_PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PART_PRECISIONS)}, got {precision!r}")
    sides = (min_side, opt_side, max_side)
    return GraphSpec(
        PART_SEGMENTER,
        (pixel_spec("image", "an RGB crop, any size (resized to the model resolution inside)", *sides, trailing=(3,)),),
        (pixel_spec("scores", "per-class scores at the crop's size; argmax = label", *sides, leading=(num_classes,),
                    dtype="float32"),),
        PART_PRECISIONS[precision],
        "one crop -> its K part score maps (SLiMe)",
    )  # fmt: skip


def slime_rules(spec: GraphSpec) -> dict:
    """The input rules a host enforces on a part segmenter (`manifest.json`'s `rules`): the crop sides."""
    image = spec.inputs[0]
    return {"sides": {"min": image.min_shape[0], "max": image.max_shape[0]}}
