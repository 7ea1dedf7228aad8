"""Segment query images with a DiffewS engine directory and a few annotated supports (no torch needed).

    python -m runtime.segment --engines engines/synth-diffews \\
        --support a.png --support-mask a_mask.png [--support b.png --support-mask b_mask.png ...] \\
        --query q1.png [q2.png ...] --out masks/

Writes, per query, NAME_mask.png (white on black) and NAME_overlay.png (the mask tinted over the
image) into --out. --save-support / --load-support store or reuse the encoded support set (.npz),
so a service can encode its supports once. Every file is written through a temporary file and a
rename, so an interrupted or failed run never leaves a damaged output. Errors are one line on
stderr with an exit code per kind of problem (`runtime.cli`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.backends import BACKENDS
from runtime.cli import check_outputs, reporting_errors
from runtime.fewshot import FewShotSegmenter
from runtime.files import check_writable
from runtime.images import load_image, save_png
from segdata.visualize import overlay_mask


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True, help="engine directory from export.build_engine")
    parser.add_argument("--support", type=Path, action="append", default=[], help="support image (repeat per shot)")
    parser.add_argument("--support-mask", type=Path, action="append", default=[], help="its mask, foreground non-zero")
    parser.add_argument("--load-support", type=Path, default=None, help="a support set saved with --save-support")
    parser.add_argument("--save-support", type=Path, default=None, help="write the encoded support set (.npz)")
    parser.add_argument("--query", type=Path, nargs="+", required=True, help="query images")
    parser.add_argument("--out", type=Path, required=True, help="output folder for masks and overlays")
    parser.add_argument("--threshold", type=float, default=None, help="override the manifest's read-out threshold")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="what runs the graphs (default auto: openvino-bf16 on a CPU with bf16, else onnxruntime; "
        "onnxruntime or openvino for the PyTorch pipeline's exact masks)",
    )
    parser.add_argument("--providers", nargs="+", default=None, help="ONNX Runtime providers (backend onnxruntime)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (ONNX Runtime, OpenVINO)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = parser.parse_args(argv)
    if args.load_support is None and not args.support:
        parser.error("give supports (--support IMG --support-mask MASK, repeated) or --load-support FILE")
    if args.load_support is not None and args.support:
        parser.error("give either --support pairs or --load-support, not both")
    if len(args.support) != len(args.support_mask):
        parser.error(f"{len(args.support)} --support images but {len(args.support_mask)} --support-mask files")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with reporting_errors():
        return run(args)


def run(args: argparse.Namespace) -> int:
    names = [q.stem for q in args.query]
    # Every output location is checked before the (slow) engines load and supports encode.
    check_outputs(args.out, names, ("mask", "overlay"), args.overwrite)
    if args.save_support is not None:
        check_writable(args.save_support, args.overwrite)
    segmenter = FewShotSegmenter.from_dir(
        args.engines, providers=args.providers, threads=args.threads, backend=args.backend
    )
    start = time.time()
    if args.load_support is not None:
        segmenter.load_support(args.load_support)
    else:
        segmenter.set_support(args.support, args.support_mask)
    support_s = time.time() - start
    if args.save_support is not None:
        segmenter.save_support(args.save_support, overwrite=args.overwrite)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for query, name in zip(tqdm(args.query, desc="queries", unit="img"), names):
        image = load_image(query, f"query {query}")
        mask = segmenter.segment(image, threshold=args.threshold)
        save_png(mask * np.uint8(255), args.out / f"{name}_mask.png", args.overwrite)
        save_png(
            overlay_mask(image, mask, (255, 64, 32), outline=False), args.out / f"{name}_overlay.png", args.overwrite
        )
    query_s = time.time() - start
    print(
        f"{segmenter.shots} support shot(s) in {support_s * 1000:.0f} ms; {len(args.query)} queries in "
        f"{query_s * 1000:.0f} ms ({query_s * 1000 / len(args.query):.0f} ms each) on {segmenter.backend}; "
        f"masks in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
