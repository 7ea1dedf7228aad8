"""Random shapes, dtypes and values into segment / set_support / load_support: a correct result or a ValueError, nothing else.

And a refused call changes nothing: the segmenter keeps answering as before.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from runtime.fewshot import FewShotSegmenter

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, bool])
SIDES = st.integers(0, 80)
SHAPES = st.one_of(
    st.tuples(SIDES, SIDES),
    st.tuples(SIDES, SIDES, st.sampled_from([1, 3, 4])),
    st.tuples(st.integers(0, 3), SIDES, SIDES, st.just(3)),
    st.tuples(st.integers(0, 5)),
)
ARRAYS = arrays(DTYPES, SHAPES)
THRESHOLDS = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.text(max_size=3), st.booleans()
)
RELAXED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def segmenter(built):
    _, engines = built
    seg = FewShotSegmenter.from_dir(engines, backend="onnxruntime")
    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1
    seg.set_support(image, mask)
    seg.reference = (image, seg.segment(image))  # a query and its mask: unchanged by refused calls
    return seg


def _unchanged(seg: FewShotSegmenter) -> None:
    image, mask = seg.reference
    np.testing.assert_array_equal(seg.segment(image), mask)


def _refused_with_a_message(err: ValueError) -> None:
    assert str(err).strip(), "a ValueError without a message"


@RELAXED
@given(query=ARRAYS, threshold=THRESHOLDS)
def test_segment_gives_a_mask_or_a_value_error(segmenter, query, threshold):
    try:
        mask = segmenter.segment(query, threshold=threshold)
    except ValueError as err:
        _refused_with_a_message(err)
    else:
        assert mask.dtype == np.uint8 and mask.shape == query.shape[:2]
        assert set(np.unique(mask)) <= {0, 1}


@RELAXED
@given(images=st.lists(ARRAYS, min_size=0, max_size=4), masks=st.lists(ARRAYS, min_size=0, max_size=4))
def test_set_support_accepts_or_refuses_and_a_refusal_changes_nothing(segmenter, images, masks):
    try:
        segmenter.set_support(images, masks)
    except ValueError as err:
        _refused_with_a_message(err)
        _unchanged(segmenter)
    else:  # a valid random support set: put the reference back for the other examples
        assert segmenter.shots == len(images)
        image, _ = segmenter.reference
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 16:48] = 1
        segmenter.set_support(image, mask)
        _unchanged(segmenter)


@RELAXED
@given(data=st.data())
def test_load_support_refuses_any_malformed_bank(segmenter, tmp_path_factory, data):
    bank = segmenter.bank
    names = list(bank)
    broken = dict(bank)
    for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        change = data.draw(st.sampled_from(["shape", "dtype", "values", "drop"]))
        if change == "drop":
            del broken[name]
        elif change == "shape":  # another shot count than the other tensors, or another layer's size, or rank
            shots, tokens, channels = bank[name].shape
            shape = data.draw(
                st.sampled_from([(shots + 1, tokens, channels), (shots, tokens - 1, channels),
                                 (shots, tokens, channels + 1), (tokens, channels), (0, tokens, channels)])
            )  # fmt: skip
            broken[name] = np.zeros(shape, np.float32)
        elif change == "dtype":
            broken[name] = bank[name].astype(data.draw(st.sampled_from([np.float16, np.float64, np.int32])))
        else:
            value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            broken[name] = bank[name].copy()
            broken[name].flat[data.draw(st.integers(0, bank[name].size - 1))] = value
    path = tmp_path_factory.mktemp("banks") / "bank.npz"
    np.savez(
        path, format=np.array("diffews-support-bank"), model_hash=np.array(segmenter.manifest.model["hash"]), **broken
    )
    with pytest.raises(ValueError) as err:
        segmenter.load_support(path)
    _refused_with_a_message(err.value)
    _unchanged(segmenter)
