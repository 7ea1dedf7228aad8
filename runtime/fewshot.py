"""`FewShotSegmenter`: DiffewS from an engine directory, with the support set encoded once and cached.

    seg = FewShotSegmenter.from_dir("engines/synth-diffews")
    seg.set_support([img_a, img_b], [mask_a, mask_b])   # 2 shots: two support_encoder runs
    seg.save_support("supports/cats.npz")               # a service can precompute banks
    mask = seg.segment(query)                           # (H, W) uint8 in {0, 1}, query_segmenter only

Numpy, pillow and onnxruntime (or openvino) only: no torch, no diffusers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from runtime.backends import open_graph, resolve_backend
from runtime.contract import QUERY_SEGMENTER, SUPPORT_ENCODER, bank_names
from runtime.images import ImageLike, check_pair, load_image, load_mask
from runtime.manifest import Manifest

BANK_FORMAT = "diffews-support-bank"


class FewShotSegmenter:
    """A DiffewS engine directory on one backend (`runtime.backends`: ONNX Runtime CPU / CUDA / TensorRT, or TensorRT)."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        providers: list | None = None,
        threads: int | None = None,
        backend: str = "auto",
    ):
        if manifest.kind != "diffews":
            raise ValueError(f"{directory} holds {manifest.kind!r} graphs, not DiffewS; use the matching runtime class")
        self.directory, self.manifest = Path(directory), manifest
        self.backend = resolve_backend(backend, providers)  # what runs the graphs, `auto` resolved
        self.support_encoder = open_graph(self.directory, manifest, SUPPORT_ENCODER, self.backend, providers, threads)
        self.query_segmenter = open_graph(self.directory, manifest, QUERY_SEGMENTER, self.backend, providers, threads)
        self.bank_names = bank_names(manifest.layers)
        self.threshold = float(manifest.readout["threshold"])
        self._bank: dict[str, np.ndarray] | None = None
        self._resident: dict | None = None  # the bank where the query graph reads it (GPU memory on a GPU backend)

    @classmethod
    def from_dir(
        cls,
        directory: str | os.PathLike,
        providers: list | None = None,
        threads: int | None = None,
        verify: bool = True,
        backend: str = "auto",
    ) -> FewShotSegmenter:
        """Loads `directory` (built by `python -m export.build_engine`); `verify` checks the files' sha256.

        Args:
            providers: ONNX Runtime providers for backend "onnxruntime" (default: CPU).
            backend: "auto" (default: `openvino-bf16` on a CPU with bf16, else `onnxruntime`),
                "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-cuda", "onnxruntime-tensorrt"
                or "tensorrt" (see `runtime.backends`). "onnxruntime" or "openvino" give the PyTorch
                pipeline's masks exactly; bf16 moves some edge pixels (README, latency section).
        """
        return cls(Path(directory), Manifest.read(directory, verify=verify), providers, threads, backend)

    # ------------------------------------------------------------------ supports
    def encode_shot(self, image: ImageLike, mask: ImageLike) -> dict[str, np.ndarray]:
        """One support shot -> its bank: name -> (1, N_l, C_l) float32."""
        image, mask = load_image(image), load_mask(mask)
        check_pair(image, mask, "support")
        outputs = self.support_encoder.run({"image": image, "mask": mask})
        return dict(zip(self.bank_names, outputs))

    def set_support(self, images: Sequence[ImageLike], masks: Sequence[ImageLike]) -> None:
        """Encodes n support shots (image i with mask i) and caches their bank for every later query."""
        if isinstance(images, (str, os.PathLike, np.ndarray)) or isinstance(masks, (str, os.PathLike, np.ndarray)):
            images, masks = [images], [masks]
        if len(images) != len(masks):
            raise ValueError(f"got {len(images)} support images but {len(masks)} masks; pass one mask per image")
        if not 1 <= len(images) <= self.manifest.max_shots:
            raise ValueError(
                f"{len(images)} support shots; these engines take 1 to {self.manifest.max_shots} "
                "(rebuild with a larger --max-shots)"
            )
        shots = []
        for i, (image, mask) in enumerate(zip(images, masks)):
            try:
                shots.append(self.encode_shot(image, mask))
            except ValueError as err:
                raise ValueError(f"support shot {i}: {err}") from err
        self._use_bank({name: np.concatenate([s[name] for s in shots], axis=0) for name in self.bank_names})

    def _use_bank(self, bank: dict[str, np.ndarray]) -> None:
        """Caches `bank` and uploads it once to where the query graph reads it."""
        self._resident = self.query_segmenter.keep(bank)
        self._bank = bank

    @property
    def bank(self) -> dict[str, np.ndarray]:
        """The cached support bank: name -> (S, N_l, C_l) float32 (what `save_support` writes)."""
        return self._require_bank()

    @property
    def shots(self) -> int:
        return 0 if self._bank is None else int(self._bank[self.bank_names[0]].shape[0])

    def save_support(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Writes the cached bank to a .npz, tagged with the model hash so only matching engines load it."""
        bank = self._require_bank()
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz" to the name
            np.savez(f, format=np.array(BANK_FORMAT), model_hash=np.array(self.manifest.model["hash"]), **bank)
        return path

    def load_support(self, path: str | os.PathLike) -> None:
        """Loads a bank written by `save_support` from the same model."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                contents = {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable support bank (.npz): {err}") from err
        if str(contents.get("format", "")) != BANK_FORMAT:
            raise ValueError(f"{path} is not a DiffewS support bank written by save_support")
        if str(contents["model_hash"]) != self.manifest.model["hash"]:
            raise ValueError(
                f"{path} was computed by another model (hash {str(contents['model_hash'])[:12]}, these engines "
                f"{self.manifest.model['hash'][:12]}); recompute it with set_support"
            )
        missing = [n for n in self.bank_names if n not in contents]
        if missing:
            raise ValueError(f"{path} lacks bank tensors {missing[:3]}")
        try:
            self._use_bank({n: contents[n] for n in self.bank_names})
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def _require_bank(self) -> dict[str, np.ndarray]:
        if self._bank is None:
            raise RuntimeError("no support set: call set_support(images, masks) or load_support(path) first")
        return self._bank

    # ------------------------------------------------------------------ queries
    def segment(self, query: ImageLike, threshold: float | None = None) -> np.ndarray:
        """The query's mask, (H, W) uint8 in {0, 1} at the query's own size.

        Args:
            threshold: overrides the manifest's read-out threshold (relative to the decoded
                mask's maximum or absolute, as the manifest's `readout.mode` says).
        """
        self._require_bank()
        cut = self.threshold if threshold is None else float(threshold)
        feed = {"image": load_image(query), "threshold": np.array(cut, dtype=np.float32)}
        return self.query_segmenter.run(feed, resident=self._resident)[0]

    def segment_batch(self, queries: Sequence[ImageLike], threshold: float | None = None) -> list[np.ndarray]:
        """Masks of several queries against the cached support set (each at its own size)."""
        return [self.segment(q, threshold) for q in queries]
