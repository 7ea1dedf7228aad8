"""Mask metrics, numpy only: binary mask IoU, and SLiMe's per-part IoU (METHOD_SPEC 2.7).

`mask_iou` compares two masks (agreement between backends, parity); the part metric is averaged
over the images where the part is present. DiffewS's dataset-level mIoU / FB-IoU (HSNet's
aggregation) lives in `train.evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two binary masks of one shape (foreground: nonzero); 1.0 when both are empty."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def image_part_ious(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[int, float]:
    """IoU of every class present in `truth` (background included), on one (H, W) label map pair."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in size")
    ious = {}
    for k in range(num_classes):
        gt = truth == k
        if not gt.any():
            continue
        pred = prediction == k
        ious[k] = float(np.logical_and(pred, gt).sum() / np.logical_or(pred, gt).sum())
    return ious


def mean_part_ious(pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict[int, float]:
    """Per class: the mean IoU over the images whose ground truth contains it (Lightning's epoch mean)."""
    sums, counts = np.zeros(num_classes), np.zeros(num_classes)
    for prediction, truth in pairs:
        for k, iou in image_part_ious(prediction, truth, num_classes).items():
            sums[k] += iou
            counts[k] += 1
    return {k: float(sums[k] / counts[k]) for k in range(num_classes) if counts[k]}


def average(ious: dict[int, float]) -> float:
    """The paper's "Average" column: the mean over parts, background included."""
    return float(np.mean(list(ious.values()))) if ious else 0.0
