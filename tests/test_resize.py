"""The matrix-product antialiased resize equals PyTorch's `F.interpolate(bilinear, antialias=True)`."""

import pytest
import torch
import torch.nn.functional as F

from export.resize import antialias_weights, resize_antialiased


@pytest.mark.parametrize(
    "height,width,size",
    [(128, 128, (128, 128)), (192, 128, (128, 128)), (37, 300, (128, 96)), (512, 700, (64, 64)), (50, 64, (128, 128))],
)
def test_matches_torch_antialiased_bilinear(height, width, size):
    x = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(height)) * 2 - 1
    want = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(resize_antialiased(x, size), want, atol=1e-5)


def test_rows_are_normalised_and_local():
    weights = antialias_weights(300, 64)  # downsampling by 4.7: each output reads about 9.4 inputs
    assert torch.allclose(weights.sum(dim=1), torch.ones(64))
    assert int((weights[10] > 0).sum()) in (9, 10)
