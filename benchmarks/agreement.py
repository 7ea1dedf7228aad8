"""Do the exported graphs + runtime give the PyTorch pipeline's masks? Per-mask IoU on held-out episodes.

    python -m benchmarks.agreement --engines engines/synth-diffews --episodes 100 --shots 1 5

The model folder is the one the engines were built from (`manifest.json` names it; --model
overrides). Episodes are the synthetic world's held-out categories of the model's fold; query
and supports are resized to a few sizes other than the model's so the in-graph resizing is
exercised too. Times the support stage (encode the shots into a bank) and the query stage
(segment one query against it) of both sides, per episode. Prints a markdown table and writes
JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from modeling.diffews_folder import load_diffews, model_hash, read_config
from runtime.backends import BACKENDS
from runtime.fewshot import FewShotSegmenter
from runtime.files import write_text
from segdata.episodes import EpisodeSampler
from segdata.synthetic import SyntheticFewShot
from segdata.world import SyntheticWorld

SIZE_FACTORS = ((1.0, 1.0), (1.5, 1.0), (1.0, 1.25), (0.75, 0.75))  # (width, height) x model resolution


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if array.shape[1::-1] == size:
        return array
    return np.asarray(Image.fromarray(array).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def agreement(model, segmenter: FewShotSegmenter, source, shots: int, episodes: int, seed: int) -> dict:
    """Per-mask IoU between the runtime and the PyTorch pipeline over `episodes` episodes of `shots` shots."""
    ious = []
    seconds = dict.fromkeys(("torch_support", "torch_query", "runtime_support", "runtime_query"), 0.0)
    sampler = EpisodeSampler(source, shots)
    r = model.resolution
    for i, ep in enumerate(tqdm(sampler.fixed_episodes(episodes, seed=seed), total=episodes, desc=f"{shots}-shot")):
        fw, fh = SIZE_FACTORS[i % len(SIZE_FACTORS)]
        size = (int(r * fw), int(r * fh))
        supports = [_resize(im, size, False) for im in ep.support_images]
        masks = [_resize(m.astype(np.uint8), size, True) for m in ep.support_masks]
        query = _resize(ep.query_image, size, False)
        start = time.perf_counter()
        bank = model.bank_from_pixels(np.stack(supports)[None], np.stack(masks)[None])
        middle = time.perf_counter()
        want = model.segment(query[None], bank)[0]
        end = time.perf_counter()
        seconds["torch_support"] += middle - start
        seconds["torch_query"] += end - middle
        start = time.perf_counter()
        segmenter.set_support(supports, masks)
        middle = time.perf_counter()
        got = segmenter.segment(query)
        end = time.perf_counter()
        seconds["runtime_support"] += middle - start
        seconds["runtime_query"] += end - middle
        ious.append(mask_iou(got, want))
    ious = np.asarray(ious)
    return {
        "shots": shots,
        "episodes": episodes,
        "mean_iou": float(ious.mean()),
        "min_iou": float(ious.min()),
        "fraction_at_least_0.99": float((ious >= 0.99).mean()),
        **{f"{stage}_ms": 1000 * total / episodes for stage, total in seconds.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True, help="engine directory (export.build_engine)")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the manifest's source)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch and runtime threads")
    parser.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="what runs the engines (default: the runtime's, auto)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    segmenter = FewShotSegmenter.from_dir(args.engines, threads=args.threads, backend=args.backend)
    folder = args.model or Path(segmenter.manifest.model["source"])
    if model_hash(folder) != segmenter.manifest.model["hash"]:
        raise SystemExit(f"error: {folder} is not the model these engines were built from (hash differs)")
    model = load_diffews(folder)
    fold = int(read_config(folder).get("data", {}).get("fold", 0))
    source = SyntheticFewShot(SyntheticWorld(resolution=model.resolution, seed=0), fold=fold, split="val", size=1000)
    rows = [agreement(model, segmenter, source, s, args.episodes, args.seed) for s in args.shots]
    print(f"{args.engines} on {segmenter.backend} against the PyTorch pipeline (fp32):")
    print(
        "| shots | episodes | mean IoU | min IoU | masks with IoU >= 0.99 | support ms: torch / runtime "
        "| query ms: torch / runtime |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['shots']} | {row['episodes']} | {row['mean_iou']:.4f} | {row['min_iou']:.4f} "
            f"| {100 * row['fraction_at_least_0.99']:.1f} % | {row['torch_support_ms']:.1f} / {row['runtime_support_ms']:.1f} "
            f"| {row['torch_query_ms']:.1f} / {row['runtime_query_ms']:.1f} |"
        )
    if args.json:
        write_text(
            args.json,
            json.dumps(
                {"engines": str(args.engines), "backend": segmenter.backend, "model": str(folder), "rows": rows},
                indent=1,
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
