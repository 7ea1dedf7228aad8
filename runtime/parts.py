"""`PartSegmenter`: SLiMe part segmentation from an engine directory (no torch), and its CLI.

    seg = PartSegmenter.from_dir("engines/car-parts")
    labels = seg.segment("car.png")          # (H, W) uint8, 0 = background, k = seg.class_names[k]
    picture = seg.overlay("car.png", labels) # (H, W, 3) uint8, parts tinted

    python -m runtime.parts --engines engines/car-parts --image a.png [b.png ...] --out parts/

The host cuts the patches (`runtime.patches`, the layout stored in the manifest unless
overridden), runs `part_segmenter` on each crop, averages the overlapping score maps and takes
the argmax. The CLI writes, per image, NAME_labels.png (the uint8 label map), NAME_parts.png
(colourised) and NAME_overlay.png (each through a temporary file and a rename), and prints the
class legend; errors are one line with an exit code per kind (`runtime.cli`).

Thread-safe and deterministic as `FewShotSegmenter` is: one instance may label images from many
threads at once, each call getting its own image's labels, the same image always the same labels.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.backends import BACKENDS, open_graph, resolve_backend
from runtime.cli import check_outputs, reporting_errors
from runtime.images import ImageLike, load_image, save_png
from runtime.manifest import EngineDirError, Manifest
from runtime.patches import Patching, labels_from_scores, patched_scores
from runtime.sections import PART_SEGMENTER
from segdata.visualize import colourize_labels, overlay_mask


class PartSegmenter:
    """A SLiMe engine directory on one backend (`runtime.backends`).

    Args:
        per_side, patch_size: override the manifest's patch layout (n x n crops of side P at the
            output size; see `runtime.patches`).
    """

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        providers: list | None = None,
        threads: int | None = None,
        backend: str = "onnxruntime",
        per_side: int | None = None,
        patch_size: int | None = None,
    ):
        if manifest.kind != "slime":
            raise EngineDirError(
                f"{directory} holds {manifest.kind!r} graphs, not a SLiMe part segmenter; "
                "use runtime.fewshot for DiffewS engines"
            )
        self.directory, self.manifest = Path(directory), manifest
        self.class_names: list[str] = list(manifest.parts.class_names)
        layout = manifest.parts.patching
        self.patching = Patching(
            layout.output_size,
            int(per_side if per_side is not None else layout.per_side),
            int(patch_size) if patch_size is not None else layout.patch_size,  # None: the whole output
        )
        self.patching.check()
        self.backend = resolve_backend(backend, providers)  # what runs the graph, `auto` resolved
        self.graph = open_graph(self.directory, manifest, PART_SEGMENTER, self.backend, providers, threads)

    @classmethod
    def from_dir(
        cls,
        directory: str | os.PathLike,
        providers: list | None = None,
        threads: int | None = None,
        verify: bool = True,
        backend: str = "onnxruntime",
        per_side: int | None = None,
        patch_size: int | None = None,
    ) -> PartSegmenter:
        """Loads `directory` (built by `python -m export.build_engine --slime ...`)."""
        manifest = Manifest.read(directory, verify=verify)
        return cls(Path(directory), manifest, providers, threads, backend, per_side, patch_size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def score_crop(self, crop: np.ndarray) -> np.ndarray:
        """(P, P, 3) uint8 -> (K, P, P) float32 class scores (one graph run)."""
        return self.graph.run({"image": crop})[0]

    def scores(self, image: ImageLike) -> np.ndarray:
        """(K, S, S) float32 overlap-averaged scores at the output size S."""
        return patched_scores(load_image(image), self.score_crop, self.patching)

    def segment(self, image: ImageLike) -> np.ndarray:
        """(H, W) uint8 part labels at the image's own size; label k is `class_names[k]`, 0 the background."""
        pixels = load_image(image)
        return labels_from_scores(self.scores(pixels), pixels.shape[0], pixels.shape[1])

    def overlay(self, image: ImageLike, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
        """(H, W, 3) uint8: the image with each part tinted in its colour (background untouched)."""
        return overlay_mask(load_image(image), labels > 0, colourize_labels(labels), alpha, outline=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True, help="engine directory from build_engine --slime")
    parser.add_argument("--image", type=Path, nargs="+", required=True, help="images to segment")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--patches-per-side", type=int, default=None, help="override the manifest's n x n crops")
    parser.add_argument("--patch-size", type=int, default=None, help="override the crop side (output pixels)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime", help="what runs the graph")
    parser.add_argument("--providers", nargs="+", default=None, help="ONNX Runtime providers (backend onnxruntime)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (ONNX Runtime, OpenVINO)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with reporting_errors():
        return run(args)


def run(args: argparse.Namespace) -> int:
    names = [p.stem for p in args.image]
    check_outputs(args.out, names, ("labels", "parts", "overlay"), args.overwrite)
    segmenter = PartSegmenter.from_dir(
        args.engines,
        providers=args.providers,
        threads=args.threads,
        backend=args.backend,
        per_side=args.patches_per_side,
        patch_size=args.patch_size,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for path, name in zip(tqdm(args.image, desc="images", unit="img"), names):
        image = load_image(path, f"image {path}")
        labels = segmenter.segment(image)
        save_png(labels, args.out / f"{name}_labels.png", args.overwrite)
        save_png(colourize_labels(labels), args.out / f"{name}_parts.png", args.overwrite)
        save_png(segmenter.overlay(image, labels), args.out / f"{name}_overlay.png", args.overwrite)
    seconds = time.time() - start
    legend = ", ".join(f"{k}={name}" for k, name in enumerate(segmenter.class_names))
    crops = len(segmenter.patching.origins())
    print(
        f"{len(args.image)} image(s) in {seconds * 1000:.0f} ms ({seconds * 1000 / len(args.image):.0f} ms each, "
        f"{crops} crop(s) per image, {segmenter.backend}); labels {legend}; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
