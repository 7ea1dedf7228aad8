"""`python -m export.build_engine --slime EMB.safetensors --out DIR`: a SLiMe engine directory.

One `part_segmenter` graph per embedding file (`export.slime_graph`), parity-checked against
PyTorch on synthetic part scenes at three crop sizes, with a manifest of kind "slime" that holds
the class names, the default patch layout and the test-time settings baked into the graph.
The directory is assembled under a temporary name beside DIR and swapped in at the end, as for DiffewS.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export.build_engine import assembling, check_out, export_graph, graph_entry, log_step, producer_versions
from export.parity import check_parity, compare_outputs, parity_table, summarise
from export.slime_graph import PartSegmenterGraph
from modeling.slime_embedding import load_slime
from runtime.contract import PART_SEGMENTER, slime_graph_spec
from runtime.manifest import Manifest, file_sha256
from runtime.patches import Patching
from runtime.sessions import GraphSession


def sample_crops(resolution: int, count: int = 3, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Synthetic part scenes at the model size, a smaller patch and a wider crop (parity inputs)."""
    from segdata.synthetic import SyntheticParts
    from segdata.world import SyntheticWorld

    parts = SyntheticParts(SyntheticWorld(resolution=resolution, seed=seed), category=0, split="val", size=count)
    sizes = [(resolution, resolution), (resolution * 3 // 4, resolution * 3 // 4), (resolution * 5 // 4, resolution)]
    samples = []
    for i, (width, height) in enumerate(sizes[:count]):
        image = parts[i][0]
        if image.shape[:2] != (height, width):
            image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        samples.append((f"{width}x{height}", image))
    return samples


def build_slime(args: argparse.Namespace) -> Path:
    start = time.time()
    out: Path = args.out
    check_out(out, args.overwrite)
    model, embedding = load_slime(args.slime, base_path=args.base_path)
    patching = Patching(model.resolution, args.patches_per_side, args.patch_size)
    patching.check()
    log_step(
        f"loaded {args.slime}: {model.num_classes} classes on base {embedding.base!r} at {model.resolution} px", start
    )
    spec = slime_graph_spec(model.num_classes, args.min_side, model.resolution, args.max_side, args.precision)
    samples = sample_crops(model.resolution, args.parity_episodes)
    graph = PartSegmenterGraph(model).eval()
    with assembling(out) as work:
        path = export_graph(graph, spec, {"image": torch.from_numpy(samples[0][1].copy())}, work, args, start)
        log_step("parity against PyTorch ...", start)
        session = GraphSession(path, spec, threads=args.threads)
        rows = []
        for name, image in samples:
            with torch.no_grad():
                want = graph(torch.from_numpy(image.copy())).numpy()
            rows += compare_outputs(spec, name, session.run({"image": image}), [want])
        table = parity_table(rows)
        print(table)
        (work / "parity.md").write_text(table + "\n")
        check_parity(rows)
        Manifest(
            kind="slime",
            model={
                "source": str(args.slime),
                "hash": file_sha256(args.slime),
                "base": embedding.base,
                "base_hash": embedding.base_hash,
            },
            resolution=model.resolution,
            precision=args.precision,
            graphs={PART_SEGMENTER: graph_entry(path, spec)},
            parts={
                "class_names": embedding.class_names,
                "patching": {
                    "output_size": patching.output_size,
                    "per_side": patching.per_side,
                    "patch_size": patching.side,
                },
                "settings": embedding.settings.to_json(),
            },  # fmt: skip
            parity=[r.to_json() for r in summarise(rows)],
            producer=producer_versions(),
            rules={"sides": {"min": args.min_side, "max": args.max_side}},
        ).write(work)
    log_step(f"engine directory ready: {out}", start)
    return out
