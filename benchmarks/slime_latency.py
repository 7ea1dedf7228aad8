"""SLiMe's part segmenter: latency against its PyTorch reference, and each backend's part-map agreement with it.

    python -m export.build_engine --slime examples/slime/mushroom.safetensors --out engines/mushroom
    python -m benchmarks.slime_latency --engines engines/mushroom --embedding examples/slime/mushroom.safetensors \\
        --out benchmarks/results/slime-latency

Rows, one image at a time through the same patching (the manifest's layout), per image size:
- `reference`: PyTorch eager, fp32, the released code's way (the whole UNet runs for every crop;
  its last blocks feed no attention map).
- `torch-stop-early`: the same model stopped after its last self-attention layer (what the graph keeps).
- one row per runtime backend (`--backends`; `openvino-bf16` only where the CPU has bf16).

Latency: p50 / p90 / max over `--calls` calls after a warm-up, interleaved row by row so the
machine's drift hits every row alike; the speed-up is p50 against `reference`'s p50 in the same
run. Agreement: over `--scenes` held-out synthetic part scenes, the share of pixels whose part
label equals the reference's, and the mean over the reference's classes of the per-class IoU
between the two label maps (the worst scene is reported too). Writes `slime-latency.json` and
`.md` with the machine's record (CPU, ISA features, threads, library versions).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.machine import machine_line, machine_record, percentiles
from benchmarks.report import write_report
from modeling.slime_embedding import load_slime
from runtime.backends import BACKENDS
from runtime.cli import refuse_to_overwrite
from runtime.openvino_graph import cpu_has_bf16
from runtime.parts import PartSegmenter
from runtime.patches import Patching, segment_parts
from segdata.metrics import image_part_ious
from segdata.samples import held_out_part_scenes

SIZE_FACTORS = ((1.0, 1.0), (1.5, 1.0), (0.75, 1.25))  # (width, height) x the model resolution


def label_agreement(want: np.ndarray, got: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(share of pixels with the same label, mean per-class IoU over the classes in `want`)."""
    ious = image_part_ious(got, want, num_classes)
    return float((want == got).mean()), float(np.mean(list(ious.values())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True, help="SLiMe engine directory")
    parser.add_argument("--embedding", type=Path, required=True, help="the embedding file the engines were built from")
    parser.add_argument(
        "--base-path", type=Path, default=None, help="local weights of the embedding's base (sd21-base)"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per row and size (at least 10)")
    parser.add_argument("--scenes", type=int, default=30, help="held-out part scenes for the agreement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--backends", nargs="+", choices=[b for b in BACKENDS if b != "auto"], default=None,
        help="runtime rows (default: onnxruntime, openvino, and openvino-bf16 where the CPU has bf16)",
    )  # fmt: skip
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.calls < 10:
        raise SystemExit("error: --calls must be at least 10 (p90 of fewer calls is one call)")
    refuse_to_overwrite([args.out / f"slime-latency.{ext}" for ext in ("json", "md")], args.overwrite)
    backends = args.backends or ["onnxruntime", "openvino"] + (["openvino-bf16"] if cpu_has_bf16() else [])
    torch.set_num_threads(args.threads)

    model, _ = load_slime(args.embedding, base_path=args.base_path)
    model.eval()
    runtimes = {b: PartSegmenter.from_dir(args.engines, threads=args.threads, backend=b) for b in backends}
    patching: Patching = next(iter(runtimes.values())).patching
    classes = next(iter(runtimes.values())).num_classes  # class_names include the background

    def torch_row(stop_early: bool):
        return lambda image: segment_parts(image, lambda crop: model.segment_crops(crop[None], stop_early)[0], patching)

    rows = {"reference": torch_row(False), "torch-stop-early": torch_row(True)}
    rows |= {backend: segmenter.segment for backend, segmenter in runtimes.items()}

    scenes = [image for _, image in held_out_part_scenes(model.resolution, args.scenes, seed=1)]
    agreement = {}
    for name, run in rows.items():
        if name == "reference":
            continue
        figures = [label_agreement(rows["reference"](image), run(image), classes) for image in scenes]
        pixels, ious = np.array(figures).T
        agreement[name] = {
            "pixel_agreement": float(pixels.mean()),
            "mean_class_iou": float(ious.mean()),
            "worst_scene_class_iou": float(ious.min()),
        }
        print(f"  {name}: agreement {agreement[name]}", flush=True)

    latency = {}
    rng = np.random.default_rng(0)
    for fw, fh in SIZE_FACTORS:
        w, h = round(model.resolution * fw), round(model.resolution * fh)
        image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        times: dict[str, list[float]] = {name: [] for name in rows}
        for run in rows.values():
            run(image)  # warm-up (the first call at a new size compiles / allocates)
        for _ in range(args.calls):
            for name, run in rows.items():
                start = time.perf_counter()
                run(image)
                times[name].append(1000 * (time.perf_counter() - start))
        latency[f"{w}x{h}"] = {name: percentiles(values) for name, values in times.items()}
        print(
            f"  {w}x{h}: " + ", ".join(f"{n} {v['p50_ms']:.0f} ms" for n, v in latency[f"{w}x{h}"].items()), flush=True
        )

    result = {
        "engines": str(args.engines),
        "embedding": str(args.embedding),
        "resolution": model.resolution,
        "patching": {"per_side": patching.per_side, "patch_size": patching.patch_size},
        "machine": machine_record(args.threads),
        "calls": args.calls,
        "scenes": args.scenes,
        "latency": latency,
        "agreement": agreement,
    }
    write_report(args.out, "slime-latency", result, markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    lines = [
        f"SLiMe part segmenter `{result['engines']}` ({result['resolution']} px model), "
        f"{machine_line(result['machine'])}; "
        f"{result['calls']} interleaved calls per row and size after a warm-up.",
        "",
        "| size | row | p50 ms | p90 ms | max ms | speed-up (p50) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for size, rows in result["latency"].items():
        reference = rows["reference"]["p50_ms"]
        lines += [
            f"| {size} | {name} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['max_ms']:.1f} | "
            f"{reference / r['p50_ms']:.2f}x |"
            for name, r in rows.items()
        ]
    lines += [
        "",
        f"Part-map agreement with `reference` over {result['scenes']} held-out scenes:",
        "",
        "| row | pixels with the same label | mean class IoU | worst scene's class IoU |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {name} | {a['pixel_agreement']:.4f} | {a['mean_class_iou']:.4f} | {a['worst_scene_class_iou']:.4f} |"
        for name, a in result["agreement"].items()
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
