"""Build a DiffewS engine directory: two ONNX graphs cut at the support K/V bank, parity-checked, with a manifest.

    python -m export.build_engine --out engines/synth-diffews          # the shipped default model
    python -m export.build_engine --model runs/diffews-fold0 --out engines/fold0 --max-shots 5
    python -m export.build_engine --model DIR --out ENGINE_DIR --precision fp16 --optimize
    python -m export.build_engine --out engines/x --tensorrt      # + TensorRT plans, or their build script
    python -m export.build_engine --slime car.safetensors --out engines/car-parts   # SLiMe (export.slime_build)

Steps (each printed with its time): load the PyTorch model with the explicit MatMul-Softmax-MatMul
attention, export `support_encoder` and `query_segmenter` (`export.onnx_export`), optionally
fuse operators with ONNX Runtime's transformer optimizer and convert to fp16, compare both graphs
with PyTorch on synthetic held-out episodes at several image sizes and shot counts (the build
fails when a declared tolerance is missed), then write `manifest.json` and `parity.md`. The
directory is assembled under a temporary name and renamed at the end, so a failed build never
leaves a half-written engine directory; an existing directory is only replaced with --overwrite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from export import tensorrt_build
from export.diffews_graphs import QuerySegmenter, SupportEncoder
from export.onnx_export import export_onnx, operator_counts
from export.optimize import convert_fp16, fuse_operators
from export.parity import ParityError, ParityRow, check_parity, compare_outputs, parity_table, summarise
from export.tensorrt_check import tensorrt_problems
from modeling.diffews import (
    RANDOM_SD21_HASH,
    RANDOM_SD21_SOURCE,
    READOUT_DECODERS,
    READOUT_NETWORKS,
    DiffewsModel,
    random_sd21_diffews,
)
from modeling.diffews_folder import load_diffews, model_hash, read_config
from modeling.presets import PRETRAINED_DIR, ModelFolderError
from runtime.contract import (
    QUERY_SEGMENTER,
    SUPPORT_ENCODER,
    FusedLayer,
    GraphSpec,
    diffews_graph_specs,
    diffews_rules,
)
from runtime.files import replacing_folder, write_text
from runtime.manifest import MANIFEST_FILE, GraphEntry, Manifest, file_sha256
from runtime.sessions import GraphSession

DEFAULT_MODEL = PRETRAINED_DIR / "synth-diffews"


def fused_layers(model: DiffewsModel) -> list[FusedLayer]:
    """The bank's layers with their token and channel counts at the model resolution (one support pass)."""
    side = model.resolution // 8
    z = torch.zeros(1, 1, 4, side, side)
    with torch.no_grad():
        bank = model.support_bank(z, z)
    return [FusedLayer(n, int(bank.keys[n].shape[1]), int(bank.keys[n].shape[2])) for n in model.fusion.layer_names]


def sample_episodes(resolution: int, fold: int, shots: int, seed: int = 0) -> list[dict]:
    """Held-out synthetic episodes at three image sizes (model size, wider, taller) for export and parity."""
    from segdata.episodes import EpisodeSampler
    from segdata.synthetic import SyntheticFewShot
    from segdata.world import SyntheticWorld

    source = SyntheticFewShot(SyntheticWorld(resolution=resolution, seed=seed), fold=fold, split="val", size=200)
    episodes = EpisodeSampler(source, shots).fixed_episodes(3, seed=seed)
    sizes = [(resolution, resolution), (resolution * 3 // 2, resolution), (resolution, resolution * 5 // 4)]

    def resized(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
        if array.shape[:2] == (size[1], size[0]):
            return array
        resample = Image.NEAREST if nearest else Image.BILINEAR
        return np.asarray(Image.fromarray(array).resize(size, resample))

    samples = []
    for episode, size in zip(episodes, sizes):
        samples.append(
            {
                "name": f"{size[0]}x{size[1]}, {shots} shot(s)",
                "support_images": [resized(im, size, False) for im in episode.support_images],
                "support_masks": [resized(m.astype(np.uint8), size, True) for m in episode.support_masks],
                "query_image": resized(episode.query_image, size, False),
            }
        )
    return samples


def _torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array))  # a writable copy


def log_step(message: str, start: float) -> None:
    print(f"[{time.time() - start:7.1f} s] {message}", flush=True)


def producer_versions() -> dict[str, str]:
    versions = {}
    for package in ("diffseg-deploy", "torch", "diffusers", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def build(args: argparse.Namespace) -> Path:
    start = time.time()
    out: Path = args.out
    check_out(out, args.overwrite)
    model, source = load_source(args)
    if args.resolution:
        if args.resolution % 64:
            raise SystemExit(
                f"error: --resolution must be a multiple of 64 (latent side divisible by 8), got {args.resolution}"
            )
        model.resolution = args.resolution
    args.readout_decoder = choose_readout_decoder(args.readout_decoder, model)
    decoder = {"vae": "VAE decoder", "head": "mask head", "fast": "distilled mask decoder"}[args.readout_decoder]
    log_step(f"loaded {source['source']} (resolution {model.resolution}, read-out {model.readout}, {decoder})", start)

    layers = fused_layers(model)
    specs = diffews_graph_specs(
        layers,
        args.max_shots,
        min_side=args.min_side,
        opt_side=model.resolution,
        max_side=args.max_side,
        precision=args.precision,
    )
    samples = sample_episodes(model.resolution, source["fold"], min(2, args.max_shots))[: args.parity_episodes]

    with assembling(out) as work:
        graphs = _export_graphs(model, specs, samples, work, args, start)
        rows = _parity(model, specs, samples, graphs, args.threads, args.readout_decoder, start)
        table = parity_table(rows)
        print(table)
        write_text(work / "parity.md", table + "\n")
        check_parity(rows)
        mode = "relative" if model.readout.relative is not None else "absolute"
        manifest = Manifest(
            kind="diffews",
            model={k: v for k, v in source.items() if k != "fold"},
            resolution=model.resolution,
            precision=args.precision,
            graphs={name: graph_entry(path, specs[name]) for name, path in graphs.items()},
            readout={
                "mode": mode,
                "threshold": readout_threshold(model),
                # the part of the model folder that decodes the mask latent
                "decoder": READOUT_NETWORKS.get(args.readout_decoder, "vae"),
            },
            max_shots=args.max_shots,
            layers=layers,
            parity=[r.to_json() for r in summarise(rows)],
            producer=producer_versions(),
            rules=diffews_rules(specs, args.max_shots),
        )
        manifest.write(work)
    log_step(f"engine directory ready: {out}", start)
    return out


def check_out(out: Path, overwrite: bool) -> None:
    """Exits when `out` exists without --overwrite, or is a non-empty folder that is no engine directory."""
    if out.exists() and not overwrite:
        raise SystemExit(f"error: {out} exists; pass --overwrite to replace it (nothing was written)")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise SystemExit(
            f"error: {out} is not empty and holds no {MANIFEST_FILE}; --overwrite only replaces engine directories"
        )


def assembling(out: Path):
    """Yields a fresh temporary folder beside `out` and swaps it in for `out` when the block succeeds.

    A failed build never leaves a half-written engine directory under `out` nor removes the old
    one, and a replaced directory is removed only once the new one is in place (`runtime.files`).
    """
    return replacing_folder(out, overwrite=True, keep_failed=True)


def graph_entry(path: Path, spec: GraphSpec) -> GraphEntry:
    """The manifest entry of an exported graph, with its external weight file when it has one."""
    data = path.with_name(path.name + ".data")
    external = {data.name: file_sha256(data)} if data.exists() else {}
    return GraphEntry(path.name, file_sha256(path), spec, external)


def load_source(args: argparse.Namespace) -> tuple[DiffewsModel, dict]:
    """The model to export (explicit-matmul attention) and what the manifest records of it."""
    if args.random_arch:
        # Speed and graph size do not depend on the weights: the SD 2.1 architecture with random
        # weights exercises the full-size export (external data) without a download.
        model = random_sd21_diffews(attention="matmul")
        return model, {"source": RANDOM_SD21_SOURCE, "hash": RANDOM_SD21_HASH, "base": "sd21", "fold": 0}
    config = read_config(args.model)
    model = load_diffews(args.model, attention="matmul")
    source = {"source": str(args.model), "hash": model_hash(args.model), "base": config.get("base")}
    return model, {**source, "fold": int(config.get("data", {}).get("fold", 0))}


def choose_readout_decoder(choice: str, model: DiffewsModel) -> str:
    """--readout-decoder -> one of `READOUT_DECODERS`; auto is the model's mask head where it has one.

    "head" and "fast" need the model's trained `mask_head/` or `mask_decoder/`.
    """
    if choice == "auto":
        return "head" if model.mask_head is not None else "vae"
    folder = READOUT_NETWORKS.get(choice)
    if folder and getattr(model, folder) is None:
        raise SystemExit(
            f"error: --readout-decoder {choice}, but the model has no {folder}/; train one with "
            f"python -m train.mask_decoder --model DIR --kind {choice}"
        )
    return choice


def readout_threshold(model: DiffewsModel) -> float:
    """The read-out's threshold value (relative factor or absolute level), fed to the query graph."""
    readout = model.readout
    return float(readout.relative if readout.relative is not None else readout.absolute)


def _export_graphs(
    model: DiffewsModel, specs: dict[str, GraphSpec], samples: list[dict], work: Path, args, start: float
) -> dict[str, Path]:
    first = samples[0]
    image, mask = _torch(first["support_images"][0]), _torch(first["support_masks"][0])
    support = SupportEncoder(model)
    with torch.no_grad():
        bank = support(image, mask)
    query_sample = {"image": _torch(first["query_image"]), "threshold": torch.tensor(readout_threshold(model))}
    query_sample.update({t.name: b for t, b in zip(specs[QUERY_SEGMENTER].inputs[2:], bank)})
    modules = {
        SUPPORT_ENCODER: (support, {"image": image, "mask": mask}, 0),
        QUERY_SEGMENTER: (QuerySegmenter(model, args.readout_decoder), query_sample, len(bank)),
    }
    return {
        name: export_graph(module, specs[name], sample, work, args, start, packed)
        for name, (module, sample, packed) in modules.items()
    }


def export_graph(
    module: torch.nn.Module, spec: GraphSpec, sample: dict, work: Path, args, start: float, packed: int = 0
) -> Path:
    """Exports one graph to WORK/NAME.onnx, then fuses (--optimize), converts (--precision fp16) and
    checks it against TensorRT's parser (fatal with --tensorrt)."""
    name = spec.name
    path = work / f"{name}.onnx"
    log_step(f"exporting {name} ...", start)
    export_onnx(module, spec, sample, path, packed_tail=packed)
    counts = operator_counts(path)
    log_step(f"exported {name}: {sum(counts.values())} nodes, {path.stat().st_size / 2**20:.1f} MiB", start)
    if args.optimize:
        fused = fuse_operators(path)
        log_step(f"fused operators in {name}: {fused}", start)
    if args.precision == "fp16":
        convert_fp16(path)
        log_step(f"converted {name} to fp16 (inputs and outputs keep their types)", start)
    problems = tensorrt_problems(path)
    verdict = f"{len(problems)} problem(s), the first: {problems[0]}" if problems else "ok"
    log_step(f"TensorRT parser check of {name}: {verdict}", start)
    if problems and args.tensorrt:
        raise SystemExit(f"error: --tensorrt, but TensorRT cannot parse {name}: {problems[0]}")
    return path


def _parity(
    model: DiffewsModel,
    specs: dict[str, GraphSpec],
    samples: list[dict],
    graphs: dict[str, Path],
    threads,
    readout_decoder: str,
    start: float,
) -> list[ParityRow]:
    log_step("parity against PyTorch ...", start)
    support_graph = GraphSession(graphs[SUPPORT_ENCODER], specs[SUPPORT_ENCODER], threads=threads)
    query_graph = GraphSession(graphs[QUERY_SEGMENTER], specs[QUERY_SEGMENTER], threads=threads)
    support, query = SupportEncoder(model), QuerySegmenter(model, readout_decoder)
    threshold = np.array(readout_threshold(model), dtype=np.float32)
    rows = []
    for sample in samples:
        shot_banks = []
        for image, mask in zip(sample["support_images"], sample["support_masks"]):
            with torch.no_grad():
                want = [t.numpy() for t in support(_torch(image), _torch(mask))]
            got = support_graph.run({"image": image, "mask": mask})
            rows += compare_outputs(specs[SUPPORT_ENCODER], sample["name"], got, want)
            shot_banks.append(want)
        bank = [np.concatenate(parts, axis=0) for parts in zip(*shot_banks)]  # torch's bank: isolates the query graph
        with torch.no_grad():
            want = [
                query(_torch(sample["query_image"]), torch.from_numpy(threshold), *map(torch.from_numpy, bank)).numpy()
            ]
        feed = {"image": sample["query_image"], "threshold": threshold}
        feed.update({t.name: b for t, b in zip(specs[QUERY_SEGMENTER].inputs[2:], bank)})
        rows += compare_outputs(specs[QUERY_SEGMENTER], sample["name"], query_graph.run(feed), want)
    log_step(f"parity checked on {len(samples)} episodes", start)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="DiffewS model folder (default: the shipped one)"
    )
    parser.add_argument(
        "--slime",
        type=Path,
        default=None,
        help="build a SLiMe part segmenter from this embedding file (python -m train.slime) instead of DiffewS",
    )
    parser.add_argument("--base-path", default=None, help="--slime: local weights folder of its base (sd21-base)")
    parser.add_argument("--patches-per-side", type=int, default=1, help="--slime: default n x n crops per image")
    parser.add_argument("--patch-size", type=int, default=None, help="--slime: default crop side (whole image)")
    parser.add_argument("--out", type=Path, required=True, help="engine directory to write")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--max-shots", type=int, default=5, help="largest support set the query graph takes")
    parser.add_argument("--resolution", type=int, default=None, help="model resolution (default: the model's own)")
    parser.add_argument("--min-side", type=int, default=32, help="smallest image side the graphs accept")
    parser.add_argument("--max-side", type=int, default=4096, help="largest image side the graphs accept")
    parser.add_argument(
        "--optimize", action="store_true", help="fuse operators with ONNX Runtime's transformer optimizer"
    )
    parser.add_argument(
        "--readout-decoder",
        choices=("auto", *READOUT_DECODERS),
        default="auto",
        help="mask read-out in the query graph: vae (the method's full VAE decoder), head (the VAE decoder to "
        "half resolution and the model's trained mask_head/: about 35 %% less decoder work), fast (the model's "
        "distilled mask_decoder/: far cheaper, less faithful edges); auto (default): head where the model "
        "has one, else vae. See the README for each one's agreement",
    )
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the parity runs")
    parser.add_argument("--parity-episodes", type=int, default=3, help="held-out episodes (1-3) the parity runs on")
    parser.add_argument(
        "--random-arch",
        choices=("sd21",),
        default=None,
        help="export this architecture with random weights instead of --model (size and speed checks)",
    )
    parser.add_argument(
        "--tensorrt",
        action="store_true",
        help="also build TensorRT plans (export.tensorrt_build; without tensorrt and a GPU: the build script only)",
    )
    parser.add_argument("--trt-precision", choices=("fp16", "fp32"), default="fp16", help="TensorRT plan precision")
    parser.add_argument("--refittable", action="store_true", help="TensorRT plans whose weights can be swapped")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    args = parser.parse_args(argv)
    if args.max_shots < 1:
        parser.error("--max-shots must be at least 1")
    if not 8 <= args.min_side <= args.max_side:
        parser.error("need 8 <= --min-side <= --max-side")
    if not 1 <= args.parity_episodes <= 3:
        parser.error("--parity-episodes must be 1, 2 or 3")
    if args.tensorrt and args.optimize:
        parser.error("--optimize writes ONNX Runtime-only operators that TensorRT cannot parse; drop it for --tensorrt")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.slime is not None:
            from export.slime_build import build_slime
            from modeling.slime_embedding import EmbeddingFileError

            try:
                build_slime(args)
            except (EmbeddingFileError, FileNotFoundError, ValueError) as err:
                raise SystemExit(f"error: {err}") from err
        else:
            build(args)
    except (ParityError, ModelFolderError) as err:
        raise SystemExit(f"error: {err}") from err
    if args.tensorrt:
        trt_args = [str(args.out), "--precision", args.trt_precision] + (["--refittable"] if args.refittable else [])
        if tensorrt_build.main(trt_args) != 0:
            print(f"the ONNX engine directory {args.out} is complete; its TensorRT plans are not", file=sys.stderr)
    print(json.dumps({"out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
