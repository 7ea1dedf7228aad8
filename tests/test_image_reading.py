"""How the runtime reads images and masks: as a viewer shows them, and never silently wrong (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from runtime.images import as_image_list, load_image, load_mask


def _scene(height=40, width=60) -> np.ndarray:
    """A smooth RGB image whose left third is bright: any rotation or clipping shows, JPEG keeps it."""
    rows, cols = np.mgrid[0:height, 0:width]
    image = np.stack([rows * 100 // height, cols * 100 // width, (rows + cols) * 50 // (height + width)], axis=2)
    image[:, : width // 3] += 120
    return image.astype(np.uint8)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    grey8 = _scene()[:, :, 0]
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_array_equal(load_image(tmp_path / "g16.png"), load_image(tmp_path / "g8.png"))
    mask16 = (grey8 > 150).astype(np.uint16) * 40000
    Image.fromarray(mask16).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m16.png"), grey8 > 150)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_to_images_and_masks(tmp_path, orientation):
    """A file stored sideways with an EXIF tag reads as its upright twin, as a viewer shows it."""
    upright = _scene()
    mask = np.zeros(upright.shape[:2], np.uint8)
    mask[5:20, 3:15] = 255
    # Orientation 3: rotated 180; 6: the viewer rotates 90 clockwise; 8: 90 counter-clockwise.
    store = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(upright).transpose(store).save(tmp_path / "photo.jpg", exif=exif, quality=100, subsampling=0)
    Image.fromarray(mask).transpose(store).save(tmp_path / "mask.png", exif=exif)
    photo = load_image(tmp_path / "photo.jpg")
    assert photo.shape == upright.shape
    assert np.abs(photo.astype(int) - upright).mean() < 6  # JPEG noise only
    np.testing.assert_array_equal(load_mask(tmp_path / "mask.png"), mask > 0)
    np.testing.assert_array_equal(load_mask(Image.open(tmp_path / "mask.png")), mask > 0)


def test_alpha_masks_are_read_only_when_unambiguous(tmp_path):
    inside = np.zeros((30, 30), bool)
    inside[5:20, 8:25] = True
    white = np.full((30, 30, 3), 255, np.uint8)
    only_alpha = np.dstack([white, inside.astype(np.uint8) * 255])  # object only in alpha, colour everywhere
    Image.fromarray(only_alpha, "RGBA").save(tmp_path / "alpha.png")
    with pytest.raises(ValueError, match=r"getchannel\('A'\)"):
        load_mask(tmp_path / "alpha.png")
    with pytest.raises(ValueError, match="ambiguous"):
        load_mask(only_alpha)
    np.testing.assert_array_equal(load_mask(Image.open(tmp_path / "alpha.png").getchannel("A")), inside)
    agreeing = np.dstack([white * inside[:, :, None], inside.astype(np.uint8) * 255])
    np.testing.assert_array_equal(load_mask(Image.fromarray(agreeing, "RGBA")), inside)
    opaque = np.dstack([white * inside[:, :, None], np.full((30, 30), 255, np.uint8)])
    np.testing.assert_array_equal(load_mask(Image.fromarray(opaque, "RGBA")), inside)
    grey_alpha = Image.fromarray(np.dstack([inside.astype(np.uint8) * 255] * 2), "LA")
    np.testing.assert_array_equal(load_mask(grey_alpha), inside)


def test_float_masks_need_finite_values_in_zero_one():
    soft = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    np.testing.assert_array_equal(load_mask(soft), soft >= 0.5)
    with pytest.raises(ValueError, match="NaN"):
        load_mask(np.full((10, 10), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_mask(soft * 255)
    np.testing.assert_array_equal(load_mask(Image.fromarray(soft, "F")), soft >= 0.5)


def test_four_channel_arrays_follow_the_dtype_rules_per_channel():
    inside = np.zeros((10, 10), bool)
    inside[2:6, 2:6] = True
    soft = np.dstack([np.where(inside, 0.8, 0.3)] * 3 + [np.where(inside, 1.0, 0.2)]).astype(np.float32)
    np.testing.assert_array_equal(load_mask(soft), inside)  # 0.3 and 0.2 are background (< 0.5)
    with pytest.raises(ValueError, match="NaN"):
        load_mask(np.dstack([soft[:, :, :3], np.full((10, 10), np.nan, np.float32)]))


def test_palette_masks_read_the_index(tmp_path):
    labels = np.zeros((20, 20), np.uint8)
    labels[2:8, 2:8] = 3
    image = Image.fromarray(labels, "P")
    image.putpalette([0, 0, 0] * 256)  # every index black: the colour would say "empty"
    image.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "voc.png"), labels > 0)


def test_unreadable_files_get_messages(tmp_path, monkeypatch):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "empty.png")
    Image.fromarray(_scene()).save(tmp_path / "ok.png")
    whole = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "cut.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # the 2400-pixel image counts as a bomb now
    with pytest.raises(ValueError, match="decompression-bomb limit"):
        load_image(tmp_path / "ok.png")
    with pytest.raises(FileNotFoundError, match="no such image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="float images"):
        load_image(Image.fromarray(np.zeros((4, 4), np.float32), "F"))
    with pytest.raises(ValueError, match="must be a file path, a PIL image or a numpy array"):
        load_image([1, 2, 3])


def test_single_images_and_iterables_become_lists():
    image = Image.fromarray(_scene())
    assert as_image_list(image, "x") == [image]
    assert as_image_list("a.png", "x") == ["a.png"]
    assert len(as_image_list((p for p in ["a.png", "b.png"]), "x")) == 2
    with pytest.raises(ValueError, match="one per shot"):
        as_image_list(np.zeros((2, 8, 8, 3), np.uint8), "support images")
    with pytest.raises(ValueError, match="or a list of them"):
        as_image_list(3, "support images")


@settings(max_examples=150, deadline=None)
@given(
    arrays(
        dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, bool]),
        shape=st.tuples(st.integers(1, 12), st.integers(1, 12))
        | st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 5)),
    )
)
def test_any_mask_array_reads_as_a_binary_mask_or_gives_a_message(array):
    try:
        mask = load_mask(array)
    except ValueError as err:
        assert str(err)
        return
    assert mask.dtype == np.uint8 and mask.shape == array.shape[:2]
    assert set(np.unique(mask)) <= {0, 1}
    if array.ndim == 2 and not np.issubdtype(array.dtype, np.floating):
        np.testing.assert_array_equal(mask, array != 0)  # integer and bool masks: non-zero is foreground
