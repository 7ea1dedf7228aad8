"""`FewShotSegmenter`: DiffewS from an engine directory, with the support set encoded once and cached.

    seg = FewShotSegmenter.from_dir("engines/synth-diffews")
    seg.set_support([img_a, img_b], [mask_a, mask_b])   # 2 shots: two support_encoder runs
    seg.save_support("supports/cats.npz")               # a service can precompute banks
    mask = seg.segment(query)                           # (H, W) uint8 in {0, 1}, query_segmenter only
    masks = seg.segment_batch([q1, q2, q3])             # batched runs where the engines have query_batch_segmenter

Numpy, pillow and onnxruntime (or openvino) only: no torch, no diffusers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.backends import OPENVINO_PRECISIONS, open_graph, openvino_precision, resolve_backend
from runtime.bank_files import read_bank_file, write_bank_file
from runtime.images import SINGLE_IMAGE_TYPES, ImageLike, as_image_list, check_pair, load_image, load_mask
from runtime.manifest import EngineDirError, GraphEntry, Manifest
from runtime.profiles import allows_reduced_precision
from runtime.sections import QUERY_BATCH, QUERY_SEGMENTER, SUPPORT_ENCODER, check_threshold


@dataclass(frozen=True)
class SupportBank:
    """An encoded support set, never changed once made (a new support set is a new `SupportBank`).

    Attributes:
        arrays: name -> (B, N_l, C_l) float32, read-only: B = S, or the selection's budget when
            the support set was larger (`runtime.support_selection`).
        resident: the same tensors where the query graph reads them (`Graph.upload`).
        batch_resident: the same for the batched query graph, where the engines have one (else empty).
        shots: S, the support shots encoded.
        selection: how its tokens were kept: "all", or the rule that reduced them
            (`SupportSelection.describe`); a saved bank records it.
        host_bytes: the host memory it holds: the arrays, plus the backend's copy where it makes one.
        owner: the `FewShotSegmenter` that made it (only its own banks are used by `segment`).
    """

    arrays: dict[str, np.ndarray]
    resident: dict
    shots: int
    host_bytes: int = 0
    selection: str = "all"
    owner: object = field(default=None, compare=False, repr=False)
    batch_resident: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def bank_shots(self) -> int:
        """B, the shots' worth of tokens the query graph reads."""
        return next(iter(self.arrays.values())).shape[0]


def batches_reproduce_single_runs(backend: str, entry: GraphEntry) -> bool:
    """Whether the batched query graph gives each query the mask `segment` gives it on `backend`.

    Not in bf16: OpenVINO's bf16 kernels round differently with the batch, so a query's mask
    would depend on which queries shared its run (seen on an AMX Xeon). There `segment_batch`
    runs the queries one by one; OpenVINO did not gain from batches on a CPU anyway.
    """
    return backend not in OPENVINO_PRECISIONS or openvino_precision(backend, entry) == "f32"


class FewShotSegmenter:
    """A DiffewS engine directory on one backend (`runtime.backends`: ONNX Runtime CPU / CUDA / TensorRT, or TensorRT).

    Thread-safe: one instance may serve many threads at once. `segment` calls run concurrently,
    each returning its own query's mask; `set_support` / `load_support` build the new bank
    completely, then swap it in with one assignment, so every `segment` uses either the old or the
    new support set, never a mix. A call that raises leaves the instance as it was.
    Deterministic: the same support set and query give the same mask on every call (every CPU
    backend; `runtime.backends` says how for bf16).
    """

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
        self.rules = manifest.rules
        try:
            self.threshold = check_threshold(manifest.diffews.readout.threshold, self.rules["threshold"])
        except ValueError as err:
            raise EngineDirError(f"{directory}: the manifest's read-out {err}; rebuild the engines") from err
        self.bank_names = manifest.diffews.bank_names
        self.selection = manifest.diffews.selection
        support_out = manifest.graph(SUPPORT_ENCODER).spec.output_names
        query_graphs = [QUERY_SEGMENTER] + ([QUERY_BATCH] if QUERY_BATCH in manifest.graphs else [])
        for name in query_graphs:
            query_bank = manifest.graph(name).spec.input_names[2:]  # after the image(s) and the threshold
            if support_out != self.bank_names or query_bank != self.bank_names:  # checked before the slow compile
                raise EngineDirError(
                    f"{directory}: the manifest's {len(manifest.diffews.layers)} layers do not match its graphs' bank "
                    f"tensors (support encoder outputs {len(support_out)}, {name} bank inputs {len(query_bank)}); "
                    "rebuild the engines"
                )
        # what runs the graphs, `auto` resolved: never bf16 for an `exact` profile
        self.backend = resolve_backend(backend, providers, allows_reduced_precision(manifest.diffews.profile))
        self.support_encoder = open_graph(self.directory, manifest, SUPPORT_ENCODER, self.backend, providers, threads)
        self.query_segmenter = open_graph(self.directory, manifest, QUERY_SEGMENTER, self.backend, providers, threads)
        self.query_batch = None  # the batched query graph, where the engines were built with --query-batch
        if QUERY_BATCH in manifest.graphs and batches_reproduce_single_runs(self.backend, manifest.graph(QUERY_BATCH)):
            self.query_batch = open_graph(self.directory, manifest, QUERY_BATCH, self.backend, providers, threads)
        self._support: SupportBank | None = None  # replaced whole, never mutated: concurrent readers see one bank

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
            backend: "auto" (default: `openvino-bf16` on a CPU with bf16 unless the engines' profile
                is `exact`, else `onnxruntime`),
                "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-cuda", "onnxruntime-tensorrt"
                or "tensorrt" (see `runtime.backends`). "onnxruntime" or "openvino" give the PyTorch
                pipeline's masks exactly; bf16 moves some edge pixels (docs/benchmarks.md, agreement).
        """
        return cls(Path(directory), Manifest.read(directory, verify=verify), providers, threads, backend)

    # ------------------------------------------------------------------ supports
    def check_image(self, image: np.ndarray, what: str) -> None:
        """Raises ValueError when `image`'s sides are outside the range these engines were built for."""
        self.check_size(image.shape[1], image.shape[0], what)

    def check_size(self, width: int, height: int, what: str) -> None:
        """`check_image` for an image not decoded yet (a server reads the size from the file's header)."""
        low, high = self.rules["sides"]["min"], self.rules["sides"]["max"]
        if not (low <= height <= high and low <= width <= high):
            raise ValueError(
                f"{what}: the image is {width}x{height}; these engines take sides from {low} to {high} pixels: "
                "resize it, or rebuild the engines with --min-side / --max-side"
            )

    def check_shots(self, images: int, masks: int) -> None:
        """Raises ValueError unless there is one mask per image and the shot count is one these engines take."""
        if images != masks:
            raise ValueError(f"got {images} support images but {masks} masks; pass one mask per image")
        low, high = self.rules["shots"]["min"], self.rules["shots"]["max"]
        if not low <= images <= high:
            raise ValueError(
                f"{images} support shots; these engines take {low} to {high} (rebuild with a larger --max-shots)"
            )

    def encode_shot(self, image: ImageLike, mask: ImageLike) -> dict[str, np.ndarray]:
        """One support shot -> its bank: name -> (1, N_l, C_l) float32 (every token, never reduced)."""
        return self._encode_shot(image, mask)[0]

    def _encode_shot(self, image: ImageLike, mask: ImageLike) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """One support shot -> (its bank, its (H, W) 0/1 mask as read; the selection rules read the mask)."""
        image, mask = load_image(image, "support image"), load_mask(mask, "support mask")
        check_pair(image, mask, "support")
        self.check_image(image, "support")
        outputs = self.support_encoder.run({"image": image, "mask": mask})
        return dict(zip(self.bank_names, outputs)), mask

    def encode_support(
        self, images: Sequence[ImageLike] | ImageLike, masks: Sequence[ImageLike] | ImageLike
    ) -> SupportBank:
        """Encodes n support shots (image i with mask i) -> their `SupportBank`; nothing is cached.

        More shots than the manifest's selection budget are reduced to the budget's token count
        here, once (`runtime.support_selection`), so every query reads a bank of bounded size.

        Args:
            images: a list of images (file paths, PIL images or (H, W, 3) uint8 arrays), or one image.
            masks: one mask per image, in the same order (`runtime.images`: how masks are read).
        """
        images, masks = as_image_list(images, "support images"), as_image_list(masks, "support masks")
        self.check_shots(len(images), len(masks))
        shots, shot_masks = [], []
        for i, (image, mask) in enumerate(zip(images, masks)):
            try:
                bank, mask = self._encode_shot(image, mask)
            except ValueError as err:
                raise ValueError(f"support shot {i}: {err}") from err
            shots.append(bank)
            shot_masks.append(mask)
        bank = {name: np.concatenate([s[name] for s in shots], axis=0) for name in self.bank_names}
        if not self.selection.reduces(len(shots)):
            return self.make_bank(bank, shots=len(shots))
        bank = self.selection.reduce(bank, shot_masks, self.manifest.diffews.bank_grids)
        return self.make_bank(bank, shots=len(shots), selection=self.selection.describe())

    def set_support(self, images: Sequence[ImageLike] | ImageLike, masks: Sequence[ImageLike] | ImageLike) -> None:
        """Encodes n support shots (`encode_support`) and caches their bank for every later `segment`."""
        self._support = self.encode_support(images, masks)  # one assignment: readers see old or new

    def check_bank(self, bank: dict[str, np.ndarray]) -> int:
        """Raises ValueError unless `bank` is a complete, finite bank of one shot count for these engines; -> S."""
        missing = [n for n in self.bank_names if n not in bank]
        if missing:
            raise ValueError(f"the bank lacks tensors {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        specs = {t.name: t for t in self.query_segmenter.spec.inputs}
        shots = {}
        for name in self.bank_names:
            array = bank[name]
            if not isinstance(array, np.ndarray):
                raise ValueError(f"bank tensor {name!r} is a {type(array).__name__}, not a numpy array")
            specs[name].check(array, "support bank")
            shots[name] = array.shape[0]
        if len(set(shots.values())) > 1:
            counts = sorted(set(shots.values()))
            odd = next(n for n, s in shots.items() if s != shots[self.bank_names[0]])
            raise ValueError(
                f"the bank's tensors hold different numbers of shots ({counts}; {self.bank_names[0]} has "
                f"{shots[self.bank_names[0]]}, {odd} {shots[odd]}): it is damaged; recompute it with set_support"
            )
        for name in self.bank_names:
            if not np.isfinite(bank[name]).all():
                raise ValueError(f"bank tensor {name!r} has NaN or infinite values: it is damaged; recompute it")
        return shots[self.bank_names[0]]

    def make_bank(self, bank: dict[str, np.ndarray], shots: int | None = None, selection: str = "all") -> SupportBank:
        """Checks `bank` (name -> (B, N_l, C_l) float32) and uploads it once to where the query graph reads it.

        Args:
            shots: the support shots it was encoded from (default: B, a bank that was not reduced).
            selection: how its tokens were kept ("all": every token; else the reducing rule's description).
        """
        bank_shots = self.check_bank(bank)
        arrays = {}
        for name in self.bank_names:  # arrays this class made (concatenated shots, a loaded file): no copy needed
            array = np.ascontiguousarray(bank[name])
            array.setflags(write=False)  # `bank` hands them out: nobody may change a bank in use
            arrays[name] = array
        resident = self.query_segmenter.upload(arrays)
        host_bytes = sum(a.nbytes for a in arrays.values()) + self.query_segmenter.resident_host_bytes(resident)
        batch_resident = {}
        if self.query_batch is not None:
            batch_resident = self.query_batch.upload(arrays)
            host_bytes += self.query_batch.resident_host_bytes(batch_resident)
        shots = bank_shots if shots is None else shots
        return SupportBank(arrays, resident, shots, host_bytes, selection, owner=self, batch_resident=batch_resident)

    @property
    def bank(self) -> dict[str, np.ndarray]:
        """The cached support bank: name -> (S, N_l, C_l) float32, read-only (what `save_support` writes)."""
        return dict(self._require_support().arrays)

    @property
    def shots(self) -> int:
        support = self._support
        return 0 if support is None else support.shots

    def save_support(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Writes the cached bank to a .npz, tagged with the model hash so only matching engines load it.

        The file is written beside `path` under a temporary name and renamed into place: a failed
        write (disk full) leaves an existing file as it was. Raises `runtime.files.OutputError`
        when `path` exists without `overwrite`, is a folder, or cannot be written.
        """
        support = self._require_support()
        meta = {"backend": self.backend, "support_shots": support.shots, "selection": support.selection}
        return write_bank_file(path, support.arrays, self.manifest.model["hash"], overwrite, meta)

    def read_support(self, path: str | os.PathLike) -> SupportBank:
        """A bank written by `save_support` from the same model, checked whole -> a `SupportBank` (nothing cached)."""
        arrays, meta = read_bank_file(path, self.manifest.model["hash"])
        try:
            return self.restore_bank(arrays, meta)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def restore_bank(self, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> SupportBank:
        """A bank from a bank file's tensors and its tags (`support_shots`, `selection`: the file's own record)."""
        shots = int(meta["support_shots"]) if meta.get("support_shots", "").isdigit() else None
        selection = meta.get("selection") or "all"  # how the file's tokens were kept, not these engines' rule
        return self.make_bank({n: arrays[n] for n in self.bank_names if n in arrays}, shots, selection)

    def load_support(self, path: str | os.PathLike) -> None:
        """Loads a bank written by `save_support` from the same model (checked whole before it replaces the current one)."""
        self._support = self.read_support(path)

    def _require_support(self) -> SupportBank:
        support = self._support
        if support is None:
            raise RuntimeError("no support set: call set_support(images, masks) or load_support(path) first")
        return support

    # ------------------------------------------------------------------ queries
    @property
    def max_query_batch(self) -> int:
        """The most queries one run takes: the batched query graph's largest batch, else 1."""
        if self.query_batch is None:
            return 1
        return self.query_batch.spec.inputs[0].max_shape[0]

    def segment(
        self, query: ImageLike, threshold: float | None = None, support: SupportBank | None = None
    ) -> np.ndarray:
        """The query's mask, (H, W) uint8 in {0, 1} at the query's own size.

        Args:
            support: a bank from `encode_support` / `read_support` to use instead of the cached
                one (a server holding many support sets passes its own).
            threshold: overrides the manifest's read-out threshold; in [0, 1) (the manifest's
                `rules.threshold`), relative to the decoded mask's maximum or absolute, as the
                manifest's `readout.mode` says.
        """
        support = self._support_for(support)  # read once: a concurrent set_support cannot change it mid-call
        cut = self._cut(threshold)
        feed = {"image": self._query_image(query, "query"), "threshold": cut}
        return self.query_segmenter.run(feed, resident=support.resident)[0]

    def segment_batch(
        self, queries: Sequence[ImageLike], threshold: float | None = None, support: SupportBank | None = None
    ) -> list[np.ndarray]:
        """Masks of several queries against one support set, in order, each (H_i, W_i) uint8 at its own size.

        With a batched query graph (`build_engine --query-batch N`), queries of one size run
        together, up to N per run; each mask equals `segment`'s of that query. Without one, on
        `openvino-bf16` (`batches_reproduce_single_runs`), or for a size only one query has, the
        queries run one by one. Every query is read and checked before any runs: a bad one
        raises ValueError naming its index, and nothing runs.

        Args:
            threshold, support: as for `segment`, the same for every query.
        """
        if isinstance(queries, SINGLE_IMAGE_TYPES):
            raise ValueError("segment_batch takes a list of queries; for one image call segment(image)")
        support = self._support_for(support)
        cut = self._cut(threshold)
        images = [self._query_image(q, f"query {i}") for i, q in enumerate(as_image_list(queries, "queries"))]
        masks: list[np.ndarray | None] = [None] * len(images)
        for run in self._batch_runs(images):
            if len(run) == 1:
                feed = {"image": images[run[0]], "threshold": cut}
                masks[run[0]] = self.query_segmenter.run(feed, resident=support.resident)[0]
                continue
            feed = {"images": np.stack([images[i] for i in run]), "threshold": cut}
            for i, mask in zip(run, self.query_batch.run(feed, resident=support.batch_resident)[0]):
                masks[i] = mask
        return masks

    def _batch_runs(self, images: list[np.ndarray]) -> list[list[int]]:
        """Indices of `images` grouped into runs: one size per run, at most `max_query_batch` each, in order."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(i)
        step = self.max_query_batch
        return [same[k : k + step] for same in by_size.values() for k in range(0, len(same), step)]

    def _support_for(self, support: SupportBank | None) -> SupportBank:
        """`support` checked to be one of this segmenter's banks, or the cached one when None."""
        if support is None:
            return self._require_support()
        if not isinstance(support, SupportBank) or support.owner is not self:
            raise ValueError(
                "support must be a SupportBank from this segmenter's encode_support or read_support, got "
                + ("one made by another segmenter" if isinstance(support, SupportBank) else type(support).__name__)
            )
        return support

    def _cut(self, threshold: float | None) -> np.ndarray:
        """The read-out threshold to feed: the manifest's, or `threshold` checked against its rules."""
        cut = self.threshold if threshold is None else check_threshold(threshold, self.rules["threshold"])
        return np.array(cut, dtype=np.float32)

    def _query_image(self, query: ImageLike, what: str) -> np.ndarray:
        image = load_image(query, what)
        self.check_image(image, what)
        return image
