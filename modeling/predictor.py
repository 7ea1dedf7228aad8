"""The PyTorch models behind the runtime's API: the same calls on the `torch` backend as on the engines.

    seg = TorchFewShotSegmenter.from_folder("modeling/pretrained/synth-diffews")
    seg.set_support([img_a, img_b], [mask_a, mask_b])      # as runtime.fewshot.FewShotSegmenter
    mask = seg.segment(query)                              # (H, W) uint8 in {0, 1}
    parts = TorchPartSegmenter.from_embedding("car.safetensors").segment(image)   # as runtime.parts

Inputs are read and checked by the runtime's own helpers (`runtime.images`), so file paths, PIL
images and arrays mean the same thing on every backend, and a bad input gets the same error.
What runs is the PyTorch pipeline the engines are parity-checked against: eager fp32, SDPA
attention, antialiased bilinear resizing to the model resolution. Agreement benchmarks and tests
compare a runtime backend with these classes call for call.

Thread-safe in the runtime's sense: `segment` reads the support bank once per call, and
`set_support` builds a new bank before swapping it in with one assignment. PyTorch runs calls
from several threads one at a time per module (the fusion processors hold per-call state), so a
lock serialises them; concurrent callers still each get their own answer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
import torch

from modeling.diffews import DiffewsModel
from modeling.kv_fusion import KVBank
from modeling.readouts import MaskThreshold
from modeling.slime import SlimeModel
from runtime.images import SINGLE_IMAGE_TYPES, ImageLike, as_image_list, check_pair, load_image, load_mask
from runtime.patches import Patching, labels_from_scores, patched_scores
from runtime.sections import READOUTS, THRESHOLD_RULES, check_threshold
from runtime.support_selection import SupportSelection


class TorchFewShotSegmenter:
    """DiffewS in PyTorch with `runtime.fewshot.FewShotSegmenter`'s methods.

    Args:
        model: the DiffewS model (eval mode is set here).
        readout: one of `runtime.sections.READOUTS` ("vae", the method's own, by default).
        max_shots: the largest support set accepted (None: any).
        selection: how a support set larger than its budget is reduced (`runtime.support_selection`;
            default: every token, the released code's behaviour), as the runtime's engines do it.
    """

    backend = "torch"

    def __init__(
        self,
        model: DiffewsModel,
        readout: str = "vae",
        max_shots: int | None = None,
        selection: SupportSelection | None = None,
    ):
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        if readout != "vae" and getattr(model, readout) is None:
            raise ValueError(f"this model has no {readout}; train one with python -m train.mask_decoder")
        self.model, self.readout, self.max_shots = model.eval(), readout, max_shots
        if selection is not None and not isinstance(selection, SupportSelection):
            raise TypeError(
                f"selection must be a runtime.support_selection.SupportSelection (e.g. SupportSelection('stratified', "
                f"budget_shots=2)), got {type(selection).__name__}"
            )
        self.selection = selection or SupportSelection()
        self._support: tuple[KVBank, int] | None = None  # (bank, shots set): replaced whole, never changed
        self._lock = threading.Lock()

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike,
        readout: str = "vae",
        max_shots: int | None = None,
        selection: SupportSelection | None = None,
    ):
        """A model folder written by `python -m train.diffews` (`modeling.diffews_folder`)."""
        from modeling.diffews_folder import load_diffews

        return cls(load_diffews(folder), readout, max_shots, selection)

    @property
    def bank(self) -> KVBank | None:
        """The support set's bank (reduced as `selection` says), None without a support set."""
        support = self._support
        return None if support is None else support[0]

    @property
    def shots(self) -> int:
        """The support shots set (before any selection), 0 without a support set."""
        support = self._support
        return 0 if support is None else support[1]

    def set_support(self, images: Sequence[ImageLike] | ImageLike, masks: Sequence[ImageLike] | ImageLike) -> None:
        """Encodes the support shots (image i with mask i; shots may differ in size) into the bank every query uses."""
        images, masks = as_image_list(images, "support images"), as_image_list(masks, "support masks")
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} support images but {len(masks)} masks; pass one mask per image")
        if not images or (self.max_shots is not None and len(images) > self.max_shots):
            raise ValueError(f"{len(images)} support shots; this segmenter takes 1 to {self.max_shots or 'any'}")
        shots = []
        for i, (image, mask) in enumerate(zip(images, masks)):
            image, mask = load_image(image, "support image"), load_mask(mask, "support mask")
            try:
                check_pair(image, mask, "support")
            except ValueError as err:
                raise ValueError(f"support shot {i}: {err}") from err
            shots.append((image, mask))
        with self._lock, torch.no_grad():
            banks = [self.model.bank_from_pixels(image[None, None], mask[None, None]) for image, mask in shots]
        bank = KVBank.concat(banks).select(self.selection, [[mask for _, mask in shots]])
        self._support = (bank, len(shots))  # one assignment: a concurrent segment sees the old or the new

    def segment(self, query: ImageLike, threshold: float | None = None) -> np.ndarray:
        """The query's mask, (H, W) uint8 in {0, 1} at its own size (`threshold` as in the runtime)."""
        support = self._support
        if support is None:
            raise RuntimeError("no support set: call set_support(images, masks) first")
        bank = support[0]
        image = load_image(query, "query")
        cut = None
        if threshold is not None:  # the model's mode at another level, for this call only
            level = check_threshold(threshold, THRESHOLD_RULES)
            relative = self.model.threshold.relative is not None
            cut = MaskThreshold(level if relative else None, None if relative else level)
        with self._lock:
            mask = self.model.segment(image[None], bank, self.readout, cut)[0]
        return mask.astype(np.uint8)

    def segment_batch(self, queries: Sequence[ImageLike], threshold: float | None = None) -> list[np.ndarray]:
        """Masks of several queries against the support set (each at its own size)."""
        if isinstance(queries, SINGLE_IMAGE_TYPES):
            raise ValueError("segment_batch takes a list of queries; for one image call segment(image)")
        return [self.segment(q, threshold) for q in as_image_list(queries, "queries")]


class TorchPartSegmenter:
    """SLiMe in PyTorch with `runtime.parts.PartSegmenter`'s methods (same patching, same argmax)."""

    backend = "torch"

    def __init__(self, model: SlimeModel, class_names: Sequence[str], patching: Patching | None = None):
        self.model, self.class_names = model.eval(), list(class_names)
        self.patching = patching or Patching(model.resolution)
        self.patching.check()
        self._lock = threading.Lock()

    @classmethod
    def from_embedding(
        cls,
        path: str | os.PathLike,
        base_path: str | os.PathLike | None = None,
        per_side: int = 1,
        patch_size: int | None = None,
    ) -> TorchPartSegmenter:
        """An embedding file written by `python -m train.slime`, on its base model."""
        from modeling.slime_embedding import load_slime

        model, embedding = load_slime(path, base_path=base_path)
        return cls(model, embedding.class_names, Patching(model.resolution, per_side, patch_size))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def score_crop(self, crop: np.ndarray) -> np.ndarray:
        """(P, P, 3) uint8 -> (K, P, P) float32 class scores."""
        with self._lock:
            return self.model.segment_crops(crop[None])[0]

    def scores(self, image: ImageLike) -> np.ndarray:
        """(K, S, S) float32 overlap-averaged scores at the output size S."""
        return patched_scores(load_image(image), self.score_crop, self.patching)

    def segment(self, image: ImageLike) -> np.ndarray:
        """(H, W) uint8 part labels at the image's own size; label k is `class_names[k]`, 0 the background."""
        pixels = load_image(image)
        return labels_from_scores(self.scores(pixels), pixels.shape[0], pixels.shape[1])
