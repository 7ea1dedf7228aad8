"""A DiffewS engine directory from a model folder: two ONNX graphs cut at the support K/V bank, parity-checked.

    from export.diffews_build import build_diffews
    build_diffews("engines/fold0", model="runs/diffews-fold0", max_shots=5)
    build_diffews("engines/sd21-random", random_arch="sd21", max_shots=2, parity_episodes=1)

Steps (each logged with its time): load the PyTorch model with the explicit MatMul-Softmax-MatMul
attention, export `support_encoder` and `query_segmenter` (`export.diffews_graphs`), optionally
fuse operators with ONNX Runtime's transformer optimizer and convert to fp16, compare both graphs
with PyTorch on synthetic held-out episodes at several image sizes and shot counts (the build
fails when a declared tolerance is missed), then write `manifest.json` and `parity.md`
(`export.engine_dir`). `python -m export.build_engine` is the command line over this function.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from export.diffews_graphs import (
    BatchQuerySegmenter,
    QuerySegmenter,
    SupportEncoder,
    diffews_graph_specs,
    diffews_rules,
    query_batch_spec,
)
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
from export.parity import ParityRow, compare_outputs, summarise
from export.profile_parts import check_part_names, choose_parts
from modeling.diffews import DiffewsModel
from modeling.diffews_folder import load_diffews, model_hash, read_config
from modeling.kv_fusion import check_query_block
from modeling.presets import PRETRAINED_DIR, RANDOM_ARCHS, random_diffews
from runtime.contract import GraphSpec
from runtime.manifest import Manifest
from runtime.profiles import DEFAULT_PROFILE
from runtime.sections import QUERY_BATCH, QUERY_SEGMENTER, SUPPORT_ENCODER, DiffewsSection, FusedLayer, Readout
from runtime.sessions import OnnxRuntimeGraph
from runtime.support_selection import DEFAULT_RULE, SupportSelection
from segdata.episodes import Episode
from segdata.samples import held_out_episodes

DEFAULT_MODEL = PRETRAINED_DIR / "synth-diffews"
MAX_PARITY_EPISODES = 3  # the model size, a wider and a taller one
# Queries per self-attention block. On SD 2.1's largest layer (4096 queries over 8192 keys, one
# shot; 24576 with five) blocks of 256 were best or nearly so among 128 to 1024 in OpenVINO bf16
# on an Intel Xeon with AMX; what they buy per query is measured on whole graphs in
# docs/benchmarks.md (blocked attention). Layers of 256 queries or fewer are not split.
DEFAULT_ATTENTION_BLOCK = 256


def build_diffews(
    out: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    random_arch: str | None = None,
    max_shots: int = 10,
    resolution: int | None = None,
    min_side: int = 32,
    max_side: int = 4096,
    precision: str = "fp32",
    optimize: bool = False,
    profile: str = DEFAULT_PROFILE,
    readout: str = "auto",
    query_encoder: str = "auto",
    threads: int | None = None,
    parity_episodes: int = MAX_PARITY_EPISODES,
    tensorrt: bool = False,
    overwrite: bool = False,
    selection: str = DEFAULT_RULE,
    selection_budget: int | None = None,
    selection_seed: int = 0,
    query_batch: int = 0,
    attention_block: int = DEFAULT_ATTENTION_BLOCK,
) -> Path:
    """Builds the engine directory `out` from a DiffewS model; returns its path.

    Args:
        model: the model folder (`modeling.diffews_folder`; default: the shipped synth model).
        random_arch: instead of a model folder, this architecture with seeded random weights
            (`modeling.presets.RANDOM_ARCHS`: "sd21"), for size and speed checks at full size.
        max_shots: the largest support set the support encoder is asked to encode.
        resolution: the model resolution (a multiple of 64; default: the model's own).
        min_side, max_side: the range of image sides the graphs accept.
        precision: "fp32" or "fp16" graphs.
        optimize: fuse operators with ONNX Runtime's transformer optimizer (not for TensorRT).
        profile: the query graph's trade-off, one of `runtime.profiles.PROFILES` ("exact",
            "default", "fast"): its read-out and query encoder, and whether `backend="auto"` may
            run it in bf16. Recorded in the manifest ("custom" when `readout` or `query_encoder`
            overrides its choice).
        readout: the query graph's mask read-out, one of `runtime.sections.READOUTS`, or "auto"
            (the profile's; `default` falls back to the VAE decoder for a model without a mask head).
        query_encoder: what encodes the query in the query graph, one of
            `runtime.sections.QUERY_ENCODERS` ("vae", the method's own, or "distilled", the model's
            `query_encoder/` from `train.query_encoder`), or "auto" (the profile's). The support
            always uses the VAE.
        threads: ONNX Runtime threads for the parity runs.
        parity_episodes: held-out episodes (1 to 3) the parity check runs on.
        tensorrt: fail when TensorRT's ONNX parser cannot read a graph (the plans are built after).
        overwrite: replace an existing engine directory.
        selection: how a support set of more shots than `selection_budget` is reduced before the
            query graph reads it (`runtime.support_selection.RULES`; "all" keeps every token, as
            the released code does).
        selection_budget: the shots' worth of tokens kept (default: the shot count the model
            was trained with, from its diffews.json, else 1). The query graph takes at most
            this many shots when the rule reduces, else `max_shots`.
        selection_seed: the "uniform" rule's seed.
        query_batch: also build `query_batch_segmenter`, the query graph taking 1 to `query_batch`
            queries of one size per run (0: not built). It holds its own copy of the query
            graph's weights, on disk and in memory.
        attention_block: queries per block in the self-attention of both graphs (0: all at once).
            The same attention (each query's softmax is its own); blocks keep the scores of one
            block, not all of them, in the CPU's cache. Recorded in the manifest.
    Raises:
        ValueError: an argument out of range; `ParityError` when a graph misses its tolerance;
        `ModelFolderError` for a missing model; `runtime.files.OutputError` when `out` cannot be written.
    """
    _check_arguments(max_shots, resolution, min_side, max_side, parity_episodes, optimize, tensorrt, query_batch)
    check_part_names(profile, readout, query_encoder)
    check_query_block(attention_block)
    SupportSelection(selection, 1 if selection_budget is None else selection_budget, selection_seed)  # before the load
    if model is not None and random_arch is not None:
        raise ValueError("give a model folder or random_arch, not both: random weights replace the model's")
    log = BuildLog()
    out = Path(out)
    check_engine_output(out, overwrite)  # before the slow load
    diffews, source = _load(Path(model if model is not None else DEFAULT_MODEL), random_arch)
    budget = source["trained_shots"] if selection_budget is None else selection_budget
    support_selection = SupportSelection(selection, budget, selection_seed)
    if resolution:
        diffews.resolution = resolution
    diffews.fusion.query_block = attention_block
    readout, query_encoder, profile = choose_parts(profile, readout, query_encoder, diffews)
    log(
        f"loaded {source['source']} (resolution {diffews.resolution}); profile {profile}: read-out {readout}, "
        f"query encoder {query_encoder}; attention in blocks of {attention_block or 'all'} queries; support selection: "
        f"{support_selection.describe()}"
    )
    layers = fused_layers(diffews)
    specs = diffews_graph_specs(
        layers,
        support_selection.bank_shots(max_shots),
        min_side=min_side,
        opt_side=diffews.resolution,
        max_side=max_side,
        precision=precision,
    )
    if query_batch:
        specs[QUERY_BATCH] = query_batch_spec(specs[QUERY_SEGMENTER], query_batch)
    # the parity runs feed the query graph whole banks: at most the shots it takes
    parity_shots = min(2, support_selection.bank_shots(max_shots))
    samples = held_out_episodes(diffews.resolution, parity_shots, parity_episodes, fold=source["fold"])
    with engine_directory(out, overwrite) as work:
        query = QuerySegmenter(diffews, readout, query_encoder)
        graphs = _export(diffews, query, specs, samples, work, log, precision, optimize, tensorrt)
        rows = _parity(diffews, query, specs, samples, graphs, threads, log)
        write_parity(work, rows)
        Manifest(
            kind="diffews",
            model={k: v for k, v in source.items() if k not in ("fold", "trained_shots")},
            resolution=diffews.resolution,
            precision=precision,
            graphs={
                # the support encoder runs once per support set: reduced precision there only costs agreement
                name: graph_entry(path, specs[name], reduced_precision=name != SUPPORT_ENCODER)
                for name, path in graphs.items()
            },
            diffews=DiffewsSection(
                model_readout(diffews, readout),
                max_shots,
                tuple(layers),
                support_selection,
                query_encoder,
                profile,
                attention_block,
            ),
            parity=[r.to_json() for r in summarise(rows)],
            producer=producer_versions(),
            rules=diffews_rules(specs, max_shots),
        ).write(work)
    log(f"engine directory ready: {out}")
    return out


def _check_arguments(
    max_shots, resolution, min_side, max_side, parity_episodes, optimize, tensorrt, query_batch
) -> None:
    if query_batch != 0 and query_batch < 2:
        raise ValueError(
            f"query_batch is the largest batch of queries, at least 2 (0: no batched graph), got {query_batch}"
        )
    if max_shots < 1:
        raise ValueError(f"max_shots must be at least 1, got {max_shots}")
    if resolution is not None and (resolution < 64 or resolution % 64):
        raise ValueError(f"resolution must be a multiple of 64 (latent side divisible by 8), got {resolution}")
    check_common_arguments(min_side, max_side, parity_episodes, MAX_PARITY_EPISODES, optimize, tensorrt)


def _load(model: Path, random_arch: str | None) -> tuple[DiffewsModel, dict]:
    """The model to export (explicit-matmul attention) and what the manifest records of it (plus its fold)."""
    if random_arch is not None:
        if random_arch not in RANDOM_ARCHS:
            raise ValueError(f"random_arch must be one of {', '.join(RANDOM_ARCHS)}, got {random_arch!r}")
        preset = RANDOM_ARCHS[random_arch]
        source = {"source": preset.source, "hash": preset.hash, "base": random_arch, "fold": 0, "trained_shots": 1}
        return random_diffews(random_arch, attention="matmul"), source
    config = read_config(model)
    diffews = load_diffews(model, attention="matmul")
    source = {"source": str(model), "hash": model_hash(model), "base": config.get("base")}
    fold = int(config.get("data", {}).get("fold", 0))
    trained_shots = int((config.get("training") or {}).get("max_shots") or 1)  # imported releases record none
    return diffews, {**source, "fold": fold, "trained_shots": trained_shots}


def model_readout(model: DiffewsModel, decoder: str) -> Readout:
    """The manifest's read-out: the model's threshold (relative factor or absolute level) and the decoder."""
    return Readout(model.threshold.mode, model.threshold.level, decoder)


def fused_layers(model: DiffewsModel) -> list[FusedLayer]:
    """The bank's layers with their token and channel counts at the model resolution (one support pass)."""
    side = model.resolution // 8
    z = torch.zeros(1, 1, 4, side, side)
    with torch.no_grad():
        bank = model.support_bank(z, z)
    return [FusedLayer(n, int(bank.keys[n].shape[1]), int(bank.keys[n].shape[2])) for n in model.fusion.layer_names]


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array))  # a writable copy


def _sample_name(episode: Episode) -> str:
    height, width = episode.query_image.shape[:2]
    return f"{width}x{height}, {episode.shots} shot(s)"


def _query_feed(image, threshold, bank: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"image": image, "threshold": np.array(threshold, dtype=np.float32), **bank}


def _export(model, query: QuerySegmenter, specs, samples, work, log, precision, optimize, tensorrt) -> dict[str, Path]:
    first = samples[0]
    support = SupportEncoder(model)
    support_sample = {"image": _tensor(first.support_images[0]), "mask": _tensor(first.support_masks[0])}
    with torch.no_grad():
        bank = support(**support_sample)
    names = specs[SUPPORT_ENCODER].output_names
    query_sample = _query_feed(first.query_image, model.threshold.level, {})
    query_sample = {k: _tensor(v) for k, v in query_sample.items()} | dict(zip(names, bank))
    modules = {
        SUPPORT_ENCODER: (support, support_sample, 0),
        QUERY_SEGMENTER: (query, query_sample, len(bank)),
    }
    if QUERY_BATCH in specs:  # a sample of 2: a batch of 1 would fix the axis at 1
        batch_sample = {**query_sample, "images": _tensor(_query_pair(first.query_image))}
        del batch_sample["image"]
        modules[QUERY_BATCH] = (BatchQuerySegmenter(query), batch_sample, len(bank))
    return {
        name: export_graph_file(module, specs[name], sample, work, log, precision, optimize, tensorrt, packed)
        for name, (module, sample, packed) in modules.items()
    }


def _query_pair(image: np.ndarray) -> np.ndarray:
    """(2, H, W, 3): a query and its mirror image, the batched graph's sample and parity input."""
    return np.stack([image, image[:, ::-1]])


def _parity(
    model, query: QuerySegmenter, specs: dict[str, GraphSpec], samples, graphs, threads, log
) -> list[ParityRow]:
    log("parity against PyTorch ...")
    support_graph = OnnxRuntimeGraph(graphs[SUPPORT_ENCODER], specs[SUPPORT_ENCODER], threads=threads)
    query_graph = OnnxRuntimeGraph(graphs[QUERY_SEGMENTER], specs[QUERY_SEGMENTER], threads=threads)
    batch_graph = None
    if QUERY_BATCH in graphs:
        batch_graph = OnnxRuntimeGraph(graphs[QUERY_BATCH], specs[QUERY_BATCH], threads=threads)
        batch = BatchQuerySegmenter(query)
    support = SupportEncoder(model)
    names = specs[SUPPORT_ENCODER].output_names
    threshold = model.threshold.level
    rows = []
    for sample in samples:
        name = _sample_name(sample)
        shot_banks = []
        for image, mask in zip(sample.support_images, sample.support_masks):
            with torch.no_grad():
                want = [t.numpy() for t in support(_tensor(image), _tensor(mask))]
            got = support_graph.run({"image": image, "mask": mask})
            rows += compare_outputs(specs[SUPPORT_ENCODER], name, got, want)
            shot_banks.append(want)
        # torch's bank for both: isolates the query graph's own error
        bank = {n: np.concatenate(parts, axis=0) for n, parts in zip(names, zip(*shot_banks))}
        feed = _query_feed(sample.query_image, threshold, bank)
        with torch.no_grad():
            want = [query(*(_tensor(feed[n]) for n in specs[QUERY_SEGMENTER].input_names)).numpy()]
        rows += compare_outputs(specs[QUERY_SEGMENTER], name, query_graph.run(feed), want)
        if batch_graph is not None:
            feed = {**feed, "images": _query_pair(sample.query_image)}
            del feed["image"]
            with torch.no_grad():
                want = [batch(*(_tensor(feed[n]) for n in specs[QUERY_BATCH].input_names)).numpy()]
            rows += compare_outputs(specs[QUERY_BATCH], name, batch_graph.run(feed), want)
    log(f"parity checked on {len(samples)} episodes")
    return rows
