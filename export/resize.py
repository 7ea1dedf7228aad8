"""Antialiased bilinear resizing written as two matrix products, for graphs that TensorRT can parse.

`F.interpolate(..., mode="bilinear", antialias=True)` exports to an ONNX `Resize` with
`antialias=1`, which TensorRT's ONNX parser rejects (see `export/tensorrt_onnx_support.json`).
The same resampling is a separable linear map: out = A_h @ x @ A_w^T, where row i of A holds the
triangle-filter weights of output pixel i over the input pixels. The weights are built inside
the graph from the (dynamic) input size with Range / arithmetic / ReduceSum, which every
backend supports, and they reproduce PyTorch's antialiased kernel (`upsample_bilinear2d_aa`):

    scale = in / out, support = max(scale, 1), centre_i = (i + 0.5) * scale
    A[i, j] = relu(1 - |j + 0.5 - centre_i| / support), each row normalised to sum 1

For upsampling (scale < 1) this is plain bilinear interpolation with edge clamping.
"""

from __future__ import annotations

import torch


def antialias_weights(in_size: int | torch.SymInt, out_size: int) -> torch.Tensor:
    """(out_size, in_size) float32 resampling matrix; `in_size` may be a symbolic (dynamic) size."""
    source = torch.arange(in_size, dtype=torch.float32) + 0.5  # input pixel centres
    # The scale as a tensor, not a Python float: a float would make torch.export guard on
    # `scale >= 1` and specialise the graph to up- or downsampling.
    scale = (source[-1] + 0.5) / out_size
    support = torch.clamp(scale, min=1.0)
    centre = (torch.arange(out_size, dtype=torch.float32) + 0.5) * scale
    weights = torch.relu(1.0 - (source[None, :] - centre[:, None]).abs() / support)
    return weights / weights.sum(dim=1, keepdim=True)


def resize_antialiased(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, size[0], size[1]); equals F.interpolate(bilinear, antialias=True)."""
    rows = antialias_weights(x.shape[-2], size[0])  # (out_h, H)
    cols = antialias_weights(x.shape[-1], size[1])  # (out_w, W)
    return rows @ x @ cols.T


def image_to_model(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, R, R) in [-1, 1], antialiased bilinear: every graph's image input.

    The pixels become float first: TensorRT keeps uint8 only at a network's edges.
    """
    x = image.float().permute(2, 0, 1)[None] / 127.5 - 1.0
    return resize_antialiased(x, (resolution, resolution))


def images_to_model(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, R, R) in [-1, 1]: `image_to_model` on B images of one size at once."""
    x = images.float().permute(0, 3, 1, 2) / 127.5 - 1.0
    return resize_antialiased(x, (resolution, resolution))
