"""The same calls on every backend: PyTorch (`modeling.predictor`) and the engines (`runtime`) give one answer."""

from __future__ import annotations

import numpy as np
import pytest

from export import build_engine
from modeling.diffews_folder import load_diffews
from modeling.predictor import TorchFewShotSegmenter
from runtime.fewshot import FewShotSegmenter
from segdata.metrics import mask_iou

BACKENDS = ("torch", "onnxruntime", "openvino")


@pytest.fixture(scope="module")
def segmenters(built):
    folder, engines = built
    made = {"torch": TorchFewShotSegmenter.from_folder(folder, max_shots=3)}
    for backend in BACKENDS[1:]:
        made[backend] = FewShotSegmenter.from_dir(engines, backend=backend)
    return made


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_gives_the_pytorch_masks(built, segmenters, episodes, backend):
    """Each backend against the model run by hand (all shots in one batch, as the released code does)."""
    model = load_diffews(built[0])
    segmenter = segmenters[backend]
    for ep in episodes:
        for shots in (1, 2):
            images, masks = ep.support_images[:shots], ep.support_masks[:shots]
            bank = model.bank_from_pixels(np.stack(images)[None], np.stack(masks)[None])
            want = model.segment(ep.query_image[None], bank)[0]
            segmenter.set_support(images, masks)
            got = segmenter.segment(ep.query_image)
            assert got.dtype == np.uint8 and got.shape == want.shape == ep.query_image.shape[:2]
            assert mask_iou(got, want) >= 0.98, (backend, shots)
            assert segmenter.shots == shots


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_repeats_itself_and_reads_thresholds_alike(segmenters, episodes, backend):
    segmenter = segmenters[backend]
    ep = episodes[0]
    segmenter.set_support(ep.support_images, ep.support_masks)
    first = segmenter.segment(ep.query_image)
    assert np.array_equal(first, segmenter.segment(ep.query_image))
    low, high = segmenter.segment(ep.query_image, 0.05), segmenter.segment(ep.query_image, 0.9)
    assert low.sum() >= first.sum() >= high.sum() and low.sum() > high.sum()
    with pytest.raises(ValueError, match="threshold must be in"):
        segmenter.segment(ep.query_image, 1.5)
    assert len(segmenter.segment_batch([ep.query_image] * 2)) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_refuses_bad_supports_with_the_same_words(segmenters, episodes, backend):
    segmenter = segmenters[backend]
    image, mask = episodes[0].support_images[0], episodes[0].support_masks[0]
    with pytest.raises(ValueError, match="mask is empty"):
        segmenter.set_support(image, np.zeros_like(mask))
    with pytest.raises(ValueError, match="2 support images but 1 masks"):
        segmenter.set_support([image, image], [mask])
    with pytest.raises(ValueError, match="segment_batch takes a list"):
        segmenter.segment_batch(image)


def test_torch_predictor_swaps_the_bank_whole(segmenters, episodes):
    reference = segmenters["torch"]
    reference.set_support(episodes[0].support_images, episodes[0].support_masks)
    with pytest.raises(ValueError):
        reference.set_support(episodes[1].support_images[0], np.zeros_like(episodes[1].support_masks[0]))
    assert reference.shots == 2  # the failed call left the old support set in place


def test_build_engine_refuses_flags_of_the_other_method(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_engine.parse_args(["--slime", "e.safetensors", "--out", str(tmp_path / "e"), "--max-shots", "3"])
    assert "--max-shots does not apply with --slime" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_engine.parse_args(["--out", str(tmp_path / "e"), "--patch-size", "48", "--parity-images", "1"])
    assert "--patch-size, --parity-images do not apply without --slime" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_engine.parse_args(["--out", str(tmp_path / "e"), "--random-arch", "sd21", "--model", "m"])
    assert not (tmp_path / "e").exists()


def test_build_functions_refuse_contradictory_or_out_of_range_arguments(tmp_path):
    from export.diffews_build import build_diffews
    from export.slime_build import build_slime

    out = tmp_path / "e"
    with pytest.raises(ValueError, match="not both"):
        build_diffews(out, model=tmp_path, random_arch="sd21")
    with pytest.raises(ValueError, match="max_shots must be at least 1"):
        build_diffews(out, max_shots=0)
    with pytest.raises(ValueError, match="readout must be auto or one of vae, mask_head, mask_decoder"):
        build_diffews(out, readout="fast")
    with pytest.raises(ValueError, match="selection budget must be a positive number of shots, got 0"):
        build_diffews(out, selection_budget=0)
    with pytest.raises(ValueError, match="rule must be one of"):
        build_diffews(out, selection="random")
    with pytest.raises(ValueError, match="1 to 3 samples"):
        build_slime(out, embedding=tmp_path / "e.safetensors", parity_images=4)
    with pytest.raises(ValueError, match="TensorRT cannot parse"):
        build_slime(out, embedding=tmp_path / "e.safetensors", optimize=True, tensorrt=True)
    assert not out.exists()
