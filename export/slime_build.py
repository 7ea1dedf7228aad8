"""A SLiMe engine directory from an embedding file: one `part_segmenter` graph, parity-checked.

    from export.slime_build import build_slime
    build_slime("engines/car-parts", embedding="car.safetensors", patches_per_side=2, patch_size=400)

One graph per embedding file (`export.slime_graph`), compared with PyTorch on synthetic part
scenes at three crop sizes, with a manifest of kind "slime" holding the class names, the default
patch layout and the test-time settings baked into the graph. The directory is assembled and
swapped in as for DiffewS (`export.engine_dir`). `python -m export.build_engine --slime` is the
command line over this function.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from export.engine_dir import (
    BuildLog,
    check_common_arguments,
    check_engine_output,
    engine_directory,
    export_graph_file,
    graph_entry,
    producer_versions,
    write_parity,
)
from export.parity import compare_outputs, summarise
from export.slime_graph import PartSegmenterGraph, slime_graph_spec, slime_rules
from modeling.slime_embedding import load_slime
from runtime.manifest import Manifest, file_sha256
from runtime.patches import Patching
from runtime.sections import PART_SEGMENTER, PartsSection
from runtime.sessions import OnnxRuntimeGraph
from segdata.samples import held_out_part_scenes

MAX_PARITY_IMAGES = 3  # the model size, a smaller crop, a wider one


def build_slime(
    out: str | os.PathLike,
    *,
    embedding: str | os.PathLike,
    base_path: str | os.PathLike | None = None,
    patches_per_side: int = 1,
    patch_size: int | None = None,
    min_side: int = 32,
    max_side: int = 4096,
    precision: str = "fp32",
    optimize: bool = False,
    threads: int | None = None,
    parity_images: int = MAX_PARITY_IMAGES,
    tensorrt: bool = False,
    overwrite: bool = False,
) -> Path:
    """Builds the engine directory `out` from a SLiMe embedding file (`python -m train.slime`); returns its path.

    Args:
        base_path: local weights folder of the embedding's base model (sd21-base), where it is not embedded.
        patches_per_side, patch_size: the default patch layout (`runtime.patches`; None: the whole image).
        min_side, max_side: the range of crop sides the graph accepts.
        precision, optimize, threads, tensorrt, overwrite: as for `export.diffews_build.build_diffews`.
        parity_images: synthetic part scenes (1 to 3) the parity check runs on.
    Raises:
        ValueError (`EmbeddingFileError` for an unreadable embedding), `ParityError`, `runtime.files.OutputError`.
    """
    check_common_arguments(min_side, max_side, parity_images, MAX_PARITY_IMAGES, optimize, tensorrt)
    log = BuildLog()
    out, embedding = Path(out), Path(embedding)
    check_engine_output(out, overwrite)
    model, saved = load_slime(embedding, base_path=base_path)
    patching = Patching(model.resolution, patches_per_side, patch_size)
    patching.check()
    log(f"loaded {embedding}: {model.num_classes} classes on base {saved.base!r} at {model.resolution} px")
    spec = slime_graph_spec(model.num_classes, min_side, model.resolution, max_side, precision)
    samples = held_out_part_scenes(model.resolution, parity_images)
    graph = PartSegmenterGraph(model).eval()
    with engine_directory(out, overwrite) as work:
        sample = {"image": torch.from_numpy(samples[0][1].copy())}
        path = export_graph_file(graph, spec, sample, work, log, precision, optimize, tensorrt)
        log("parity against PyTorch ...")
        session = OnnxRuntimeGraph(path, spec, threads=threads)
        rows = []
        for name, image in samples:
            with torch.no_grad():
                want = graph(torch.from_numpy(image.copy())).numpy()
            rows += compare_outputs(spec, name, session.run({"image": image}), [want])
        write_parity(work, rows)
        Manifest(
            kind="slime",
            model={
                "source": str(embedding),
                "hash": file_sha256(embedding),
                "base": saved.base,
                "base_hash": saved.base_hash,
            },
            resolution=model.resolution,
            precision=precision,
            graphs={PART_SEGMENTER: graph_entry(path, spec)},
            parts=PartsSection(tuple(saved.class_names), patching, saved.settings.to_json()),
            parity=[r.to_json() for r in summarise(rows)],
            producer=producer_versions(),
            rules=slime_rules(spec),
        ).write(work)
    log(f"engine directory ready: {out}")
    return out
