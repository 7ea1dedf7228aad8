"""The two deployable DiffewS graphs, as torch modules around a `DiffewsModel`, cut at the K/V bank.

    support_encoder:  image (H, W, 3) uint8, mask (H, W) uint8
                      -> key_i, value_i (1, N_i, C_i) float32 for every fused layer i
    query_segmenter:  image (H, W, 3) uint8, threshold () float32, key_i, value_i (S, N_i, C_i)
                      -> mask (H, W) uint8 in {0, 1}
    query_batch_segmenter (optional, `--query-batch`): images (B, H, W, 3) uint8 of one size,
                      threshold, the same bank -> masks (B, H, W) uint8

Pre- and post-processing live inside the graphs (any input size, resize to the model resolution,
VAE encode, mask read-out, resize back), so a host only moves uint8 pixels and bank tensors.
A shot's bank has a leading axis of 1; an n-shot bank is the concatenation of n single-shot
banks along that axis, which the query graph flattens into the token axis (query tokens
first, then shot after shot: the order `KVBank.concat` uses).

`diffews_graph_specs` describes both graphs' inputs and outputs (`runtime.contract`) and
`diffews_rules` the input rules a host enforces; both go into `manifest.json`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from export.resize import image_to_model, images_to_model
from modeling.diffews import TIMESTEP, DiffewsModel
from modeling.kv_fusion import KVBank
from runtime.contract import GraphSpec, TensorSpec, Tolerance, pixel_spec
from runtime.sections import QUERY_BATCH, QUERY_SEGMENTER, SUPPORT_ENCODER, THRESHOLD_RULES, FusedLayer, bank_names


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
        z_image = model.encode(image_to_model(image, model.resolution))
        z_mask = model.encode(_mask_to_model(mask, model.resolution))
        # The whole support stream runs (an exception cannot stop a traced graph early); the
        # layers after the last self-attention feed no output and the exporter drops them.
        bank = model.support_bank(z_image[:, None], z_mask[:, None], stop_early=False)
        names = model.fusion.layer_names
        return tuple(bank.keys[n] for n in names) + tuple(bank.values[n] for n in names)


class QuerySegmenter(nn.Module):
    """A query image, the read-out threshold and an S-shot bank -> the query's uint8 mask at its own size.

    Args:
        readout: what decodes the mask latent, one of `runtime.sections.READOUTS` (`DiffewsModel.decode_mask_images`).
        query_encoder: what encodes the query, one of `modeling.query_encoders.QUERY_ENCODERS` (`DiffewsModel.encode_query`).
    """

    def __init__(self, model: DiffewsModel, readout: str = "vae", query_encoder: str = "vae"):
        super().__init__()
        self.model, self.readout, self.query_encoder = model, readout, query_encoder

    def forward(self, image: torch.Tensor, threshold: torch.Tensor, *bank: torch.Tensor) -> torch.Tensor:
        x = image_to_model(image, self.model.resolution)
        mask = self.masks(x, threshold, bank, (image.shape[0], image.shape[1]), batched=False)
        return mask[0].to(torch.uint8)  # cast last: TensorRT keeps uint8 only at a network's edges

    def masks(
        self, x: torch.Tensor, threshold: torch.Tensor, bank: tuple[torch.Tensor, ...], size, batched: bool
    ) -> torch.Tensor:
        """(B, 3, R, R) queries in [-1, 1] against one S-shot bank -> (B, *size) float masks in {0, 1}.

        Args:
            bank: keys then values of every fused layer, each (S, N, C).
            size: (H, W), the queries' own size.
            batched: B is a graph axis: the bank and the empty prompt are expanded to it (with B
                fixed at 1 they are not, so the single-query graph has no Expand).
        """
        model = self.model
        names = model.fusion.layer_names
        if len(bank) != 2 * len(names):
            raise ValueError(f"expected {2 * len(names)} bank tensors (keys then values), got {len(bank)}")
        batch = x.shape[0]
        tokens = [t.reshape(1, -1, t.shape[-1]) for t in bank]  # (S, N, C) -> (1, S*N, C): shot after shot
        context = model.empty_embedding
        if batched:  # every query reads the same bank
            tokens = [t.expand(batch, -1, -1) for t in tokens]
            context = context.expand(batch, -1, -1)
        kv = KVBank(dict(zip(names, tokens[: len(names)])), dict(zip(names, tokens[len(names) :])), bank[0].shape[0])
        z_query = model.encode_query(x, self.query_encoder)
        with model.fusion.reading(kv):
            output = model.unet(z_query, TIMESTEP, encoder_hidden_states=context).sample
        decoded = model.decode_mask_images(-output, self.readout)
        x = (decoded.clamp(-1, 1) + 1) / 2  # [B, 3, R, R] in [0, 1]
        if model.threshold.relative is not None:
            # each query's own maximum; one query keeps the axis-free ReduceMax, since ONNX Runtime's
            # symbolic shape inference (what --optimize's fusions need) cannot read one with axes
            cut = threshold * (x.amax(dim=(1, 2, 3), keepdim=True) if batched else x.max())
        else:
            cut = threshold
        mask = (x.mean(dim=1, keepdim=True) > cut).float()  # [B, 1, R, R]
        mask = F.interpolate(mask, size=size, mode="nearest")
        return mask[:, 0]


class BatchQuerySegmenter(nn.Module):
    """B query images of one size, the threshold and one S-shot bank -> their (B, H, W) uint8 masks.

    The batched variant of `QuerySegmenter` (same parts, same bank): one run for many queries of
    one support set, for GPU throughput and a server's dynamic batching. Query i's mask equals
    the single-query graph's mask of image i.
    """

    def __init__(self, query: QuerySegmenter):
        super().__init__()
        self.query = query

    def forward(self, images: torch.Tensor, threshold: torch.Tensor, *bank: torch.Tensor) -> torch.Tensor:
        x = images_to_model(images, self.query.model.resolution)
        masks = self.query.masks(x, threshold, bank, (images.shape[1], images.shape[2]), batched=True)
        return masks.to(torch.uint8)


# Parity tolerances per precision: (bank tensors, query mask). fp32 graphs must match PyTorch to
# float rounding; fp16 ones to half-precision rounding accumulated over the UNet.
PRECISIONS = {
    "fp32": (Tolerance(max_rel_l2=1e-3), Tolerance(min_iou=0.99)),
    "fp16": (Tolerance(max_rel_l2=2e-2), Tolerance(min_iou=0.95)),
}


def diffews_graph_specs(
    layers: list[FusedLayer],
    max_shots: int,
    min_side: int = 32,
    opt_side: int = 512,
    max_side: int = 4096,
    precision: str = "fp32",
) -> dict[str, GraphSpec]:
    """The `support_encoder` and `query_segmenter` descriptors of a DiffewS model.

    Args:
        layers: the fused layers in execution order.
        max_shots: the largest S the query graph is built for.
        min_side, opt_side, max_side: the range of image height and width (pixels) the graphs are built for.
        precision: "fp32" or "fp16" (looser parity tolerances; the I/O types stay as listed).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    bank_tolerance, mask_tolerance = PRECISIONS[precision]

    def pixels(name: str, channels: tuple[int, ...], doc: str, axes=("height", "width")) -> TensorSpec:
        return pixel_spec(name, doc, min_side, opt_side, max_side, trailing=channels, axes=axes)

    names = bank_names(layers)
    per_layer = layers + layers
    shot_bank = tuple(
        TensorSpec(n, "float32", (1, ly.tokens, ly.channels), *(((1, ly.tokens, ly.channels),) * 3), f"{ly.name}")
        for n, ly in zip(names, per_layer)
    )
    query_bank = tuple(
        TensorSpec(
            n,
            "float32",
            ("shots", ly.tokens, ly.channels),
            (1, ly.tokens, ly.channels),
            (1, ly.tokens, ly.channels),
            (max_shots, ly.tokens, ly.channels),
            f"{ly.name}: the shots' single-shot banks concatenated on axis 0",
        )
        for n, ly in zip(names, per_layer)
    )
    # Axes of its own: the graph resizes the mask by the mask's shape, whatever the image's is (the
    # runtime and the manifest's rules still require both to be one size).
    mask_in = pixels(
        "mask", (), "support mask, foreground > 0, same size as the image", axes=("mask_height", "mask_width")
    )
    threshold = TensorSpec(
        "threshold", "float32", (), (), (), (), "read-out threshold (relative or absolute, see manifest)"
    )
    mask_out = pixels("mask", (), "query mask in {0, 1} at the query's size")
    return {
        SUPPORT_ENCODER: GraphSpec(
            SUPPORT_ENCODER,
            (pixels("image", (3,), "support image, RGB, any size"), mask_in),
            shot_bank,
            bank_tolerance,
            "one support shot -> its K/V bank",
        ),
        QUERY_SEGMENTER: GraphSpec(
            QUERY_SEGMENTER,
            (pixels("image", (3,), "query image, RGB, any size"), threshold, *query_bank),
            (mask_out,),
            mask_tolerance,
            "query image + S-shot bank -> query mask",
        ),
    }


def query_batch_spec(query: GraphSpec, max_batch: int) -> GraphSpec:
    """The `query_batch_segmenter` descriptor: `query` with a leading batch axis of 1..max_batch on image and mask.

    The bank and threshold inputs are the single-query graph's; the B images share one size.
    """
    if max_batch < 2:
        raise ValueError(f"a batched query graph takes at least 2 queries, got a largest batch of {max_batch}")
    image, threshold, *bank = query.inputs
    mask = query.outputs[0]

    def batched(spec: TensorSpec, name: str, doc: str) -> TensorSpec:
        return TensorSpec(
            name,
            spec.dtype,
            ("batch", *spec.shape),
            (1, *spec.min_shape),
            (max_batch, *spec.opt_shape),
            (max_batch, *spec.max_shape),
            doc,
        )

    return GraphSpec(
        QUERY_BATCH,
        (batched(image, "images", "query images, RGB, all of one size"), threshold, *bank),
        (batched(mask, "masks", "each query's mask in {0, 1} at the queries' size"),),
        query.tolerance,
        "B query images of one size + one S-shot bank -> their masks",
    )


def diffews_rules(specs: dict[str, GraphSpec], max_shots: int) -> dict:
    """The input rules a host must enforce, as written into `manifest.json` (`rules`; schema in the manifest module).

    The graphs themselves check nothing: a feed that breaks a rule gives a wrong answer, not an error.
    """
    image = specs[SUPPORT_ENCODER].inputs[0]
    return {
        "sides": {"min": image.min_shape[0], "max": image.max_shape[0]},
        "support_mask": {"same_size_as": "image", "foreground": "value > 0", "min_foreground_pixels": 1},
        "shots": {"min": 1, "max": max_shots},
        "threshold": dict(THRESHOLD_RULES),
        "bank": {
            "from": SUPPORT_ENCODER,
            "to": QUERY_SEGMENTER,
            "feeds": {name: name for name in specs[SUPPORT_ENCODER].output_names},
            "shot_axis": 0,
            "same_shots_in_every_tensor": True,
            "finite": True,
        },
    }
