"""The shipped SLiMe example embedding segments its test images well above the trivial baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modeling.slime_embedding import load_slime
from runtime.patches import Patching, segment_parts
from segdata.layouts import PartFolder
from segdata.metrics import average, mean_part_ious

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "slime"


def test_shipped_embedding_beats_all_background_by_far():
    model, embedding = load_slime(EXAMPLES / "mushroom.safetensors")
    assert embedding.class_names == ["background", "cap", "stem"] and embedding.base == "synth"
    test = PartFolder(EXAMPLES / "red_plain_mushroom", "test")
    truths = [labels for _, labels in test]
    predictions = [
        segment_parts(image, lambda crop: model.segment_crops(crop[None])[0], Patching(model.resolution))
        for image, _ in test
    ]
    slime = average(mean_part_ious(zip(predictions, truths), 3))
    background = average(mean_part_ious(((np.zeros_like(t), t) for t in truths), 3))
    # measured when it was shipped: 0.81 against 0.29
    assert slime >= background + 0.4, (slime, background)
