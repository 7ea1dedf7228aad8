"""Per-stage latency of DiffewS: the authors' way (PyTorch eager) against this toolkit's runtime, measured in one run.

    python -m benchmarks.latency --engines engines/synth-diffews --out bench/synth
    python -m benchmarks.latency --arch sd21 --out bench/sd21      # SD 2.1 architecture, random weights

Rows (one query against a fixed support set, 1 shot by default, at the model resolution):

| row | what a query costs |
| --- | --- |
| `reference` | the released code's way: every query re-encodes the support image and mask, runs the whole support UNet (not stopped after the last self-attention), then encodes the query, runs the query UNet and the full VAE decoder; PyTorch eager, fp32 |
| `torch-cached` | the same PyTorch model with the support bank computed once: query encode, UNet, decode |
| `onnxruntime`, `openvino`, `openvino-bf16` | each engine directory's `query_segmenter` graph (bank computed once by `support_encoder`) on that CPU backend (`--backends`); `, head read-out` / `, fast read-out` for a directory built with the model's mask head / distilled decoder |

Stages: `support` (per query in `reference`, once otherwise), `query_encode`, `query_unet`,
`readout` (mask decode and threshold), plus `io` in the runtime (in-graph resizing and casts).
PyTorch stages are timed one by one; the runtime's query graph is timed whole and split by
stage with ONNX Runtime's profiler or OpenVINO's per-node counters (each exported node's name
scope tells its stage). Medians after warm-up, with min and max; ratios against `reference`
come from this same run.
FLOPs per stage are counted with `torch.utils.flop_counter` and set against the machine's peak,
measured in the same run with a large fp32 matmul. Peak memory per stage is the resident set
above the level at the stage's start (`benchmarks.memory`): per PyTorch stage, and per graph run
in the runtime (support encoder, query segmenter). Writes `latency.json`, `latency.md` and
`latency.png` into --out. Speed does not depend on the weights, so `--arch sd21` uses random ones
(the engines are exported once into `engines/sd21-random` and reused).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.memory import PeakResident
from modeling.diffews import RANDOM_SD21_HASH, DiffewsModel, random_sd21_diffews
from modeling.diffews_folder import load_diffews, model_hash
from runtime.backends import BACKENDS, OPENVINO_PRECISIONS, cpu_has_bf16, openvino_config
from runtime.contract import QUERY_SEGMENTER
from runtime.fewshot import FewShotSegmenter
from runtime.files import replacing_file, write_text
from runtime.manifest import Manifest
from segdata.episodes import EpisodeSampler
from segdata.synthetic import SyntheticFewShot
from segdata.world import SyntheticWorld

STAGES = ("support", "query_encode", "query_unet", "readout", "io")
SD21_ENGINES = Path("engines/sd21-random")
# manifest read-out decoder -> (the PyTorch stage its FLOPs come from, the row name's suffix)
READOUT_ROWS = {
    "vae": ("readout", ""),
    "mask_head": ("readout_head", ", head read-out"),
    "mask_decoder": ("readout_fast", ", fast read-out"),
}


def timed(fn, repeats: int, warmup: int) -> dict:
    """Median, min and max wall time of fn() in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def flops_of(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Practical fp32 peak of this machine: a large matmul, best of `repeats`.

    Convolutions can beat it (oneDNN may pick Winograd-style algorithms that do fewer multiplies
    than the FLOPs counted), so a stage can show more than 100 % of this peak.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = min(timed(lambda: torch.matmul(a, b), 1, 1)["median_ms"] for _ in range(repeats))
    return 2 * size**3 / best / 1e6


# --------------------------------------------------------------------------- PyTorch rows
def torch_stages(model: DiffewsModel, support: tuple[np.ndarray, np.ndarray], query: np.ndarray) -> dict:
    """The PyTorch stage callables on one episode, inputs already at the model resolution."""
    from modeling.imaging import images_to_tensor, masks_to_tensor

    image, mask = images_to_tensor(support[0][None]), masks_to_tensor(support[1][None])
    x_query = images_to_tensor(query[None])
    state: dict = {}

    def full_support():  # the released code: both encodes, then the whole support UNet
        state["bank"] = model.support_bank(model.encode(image)[:, None], model.encode(mask)[:, None], stop_early=False)

    def cached_support():
        state["bank"] = model.support_bank(model.encode(image)[:, None], model.encode(mask)[:, None])

    def query_encode():
        state["z"] = model.encode(x_query)

    def query_unet():
        state["out"] = model.predict_mask_latents(state["z"], state["bank"])

    def readout():
        state["mask"] = model.decode_masks(state["out"])

    def readout_head():
        state["mask"] = model.decode_masks(state["out"], "head")

    def readout_fast():
        state["mask"] = model.decode_masks(state["out"], "fast")

    cached_support()
    query_encode()
    query_unet()
    stages = {
        "support_full": full_support,
        "support_cached": cached_support,
        "query_encode": query_encode,
        "query_unet": query_unet,
        "readout": readout,
    }
    if model.mask_head is not None:
        stages["readout_head"] = readout_head
    if model.mask_decoder is not None:
        stages["readout_fast"] = readout_fast
    return stages


def peak_extra_mb(fn) -> float:
    """The resident memory `fn()` needs above what the process holds when it starts, in MB."""
    with PeakResident() as peak:
        fn()
    return peak.extra_mb


def measure_torch(model, episode, repeats: int, warmup: int) -> tuple[dict, dict, dict]:
    """Per-stage timings, FLOPs and peak memory (MB) of the PyTorch pipeline (both support variants)."""
    stages = torch_stages(model, *episode)
    timings, flops, memory = {}, {}, {}
    with torch.no_grad():
        for name, fn in stages.items():
            flops[name] = flops_of(fn)
            timings[name] = timed(fn, repeats, warmup)
            memory[name] = peak_extra_mb(fn)
            print(f"  torch {name}: {timings[name]['median_ms']:.1f} ms, {memory[name]:.0f} MB", flush=True)
    return timings, flops, memory


# --------------------------------------------------------------------------- runtime row
def stage_of(scopes: str) -> str:
    """Benchmark stage of a query-graph node from its exporter name scopes."""
    if "model.vae.encoder" in scopes or "model.vae.quant_conv" in scopes:
        return "query_encode"
    if "model.unet" in scopes:
        return "query_unet"
    if any(
        k in scopes for k in ("model.vae.decoder", "model.vae.post_quant_conv", "model.mask_head", "model.mask_decoder")
    ):
        return "readout"
    return "io"


def node_stages(graph_path: Path) -> dict[str, str]:
    """Node name -> stage, from the `pkg.torch.onnx.name_scopes` metadata the dynamo exporter writes."""
    model = onnx.load(str(graph_path), load_external_data=False)
    stages = {}
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        stages[node.name] = stage_of(scopes)
    return stages


def profiled_split(engines: Path, feed: dict, threads: int | None, runs: int = 2) -> dict[str, float]:
    """Share of the query graph's kernel time per stage, from ONNX Runtime's profiler."""
    import onnxruntime as ort

    manifest = Manifest.read(engines, verify=False)
    path = engines / manifest.graph(QUERY_SEGMENTER).file
    options = ort.SessionOptions()
    # Unfused, so every profiled node keeps its exported name (and stage); only the shares are used.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_profiling = True
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "query")
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    stages, totals = node_stages(path), defaultdict(float)
    for event in events:
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            totals[stages.get(name[: -len("_kernel_time")], "io")] += event["dur"]
    return _shares(totals)


def _shares(totals: dict[str, float]) -> dict[str, float]:
    whole = sum(totals.values()) or 1.0
    return {stage: totals[stage] / whole for stage in ("query_encode", "query_unet", "readout", "io")}


def openvino_split(engines: Path, feed: dict, threads: int | None, precision: str, runs: int = 2) -> dict[str, float]:
    """Share of the query graph's time per stage, from OpenVINO's per-node performance counters.

    OpenVINO fuses nodes; each executed node lists the exported nodes it came from
    (`originalLayersNames`), whose name scopes tell its stage. Nodes the plugin inserted (layout
    reorders, normalisation pieces under new names) take the stage of the node executed before them.
    """
    import openvino as ov

    path = engines / Manifest.read(engines, verify=False).graph(QUERY_SEGMENTER).file
    config = {**openvino_config(precision, threads), "PERF_COUNT": True}  # compiled as the runtime compiles it
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    origins = {
        op.get_friendly_name(): op.get_rt_info()["originalLayersNames"].astype(str).split(",")
        for op in compiled.get_runtime_model().get_ops()
    }
    request = compiled.create_infer_request()
    for _ in range(runs):
        request.infer(feed)
    stages, totals, stage = node_stages(path), defaultdict(float), "io"
    for node in request.profiling_info:  # the last run's counters, in execution order
        names = [n.split("/")[0] for n in origins.get(node.node_name, []) if n]
        stage = next((stages[n] for n in names if n in stages), stage)
        totals[stage] += node.real_time.total_seconds()
    return _shares(totals)


def _time_runtime(
    engines: Path, backend: str, episode, repeats: int, warmup: int, threads: int | None
) -> tuple[dict, dict, dict]:
    """(support timing, query timing, the query graph's feed) with a FewShotSegmenter on `backend`."""
    segmenter = FewShotSegmenter.from_dir(engines, threads=threads, verify=False, backend=backend)
    (image, mask), query = episode
    # Memory on the first runs: ONNX Runtime's arena (and OpenVINO's memory pool) grows to what a
    # graph needs then keeps it, so later runs show no growth although they use the same memory.
    memory = {
        "support": peak_extra_mb(lambda: segmenter.set_support(image, mask)),
        "query": peak_extra_mb(lambda: segmenter.segment(query)),
    }
    support = timed(lambda: segmenter.set_support(image, mask), repeats, warmup)
    query_ms = timed(lambda: segmenter.segment(query), repeats, warmup + 1)  # ORT: the 2nd run is still slow
    support["peak_extra_mb"], query_ms["peak_extra_mb"] = memory["support"], memory["query"]
    feed = {"image": query, "threshold": np.array(segmenter.threshold, np.float32), **segmenter.bank}
    return support, query_ms, feed


def measure_runtime(engines: Path, backend: str, episode, repeats: int, warmup: int, threads: int | None) -> dict:
    # The segmenter's graphs are freed before the profiling run loads the query graph again.
    support, query, feed = _time_runtime(engines, backend, episode, repeats, warmup, threads)
    decoder = Manifest.read(engines, verify=False).readout.get("decoder", "vae")
    print(
        f"  runtime ({engines}, {decoder}, {backend}) support {support['median_ms']:.1f} ms, "
        f"query {query['median_ms']:.1f} ms, {query['peak_extra_mb']:.0f} MB",
        flush=True,
    )
    if backend in OPENVINO_PRECISIONS:
        split = openvino_split(engines, feed, threads, OPENVINO_PRECISIONS[backend])
    else:
        split = profiled_split(engines, feed, threads)
    return {
        "engines": str(engines),
        "backend": backend,
        "decoder": decoder,
        "support": support,
        "query": query,
        "split": split,
    }


# --------------------------------------------------------------------------- the run
def load_models(engines: list[Path]) -> tuple[DiffewsModel, Manifest]:
    """The PyTorch model the engines were built from (SDPA attention, as eager users run it)."""
    manifests = [Manifest.read(e, verify=False) for e in engines]
    # The source of a head or fast read-out build carries the network its PyTorch FLOPs are counted on.
    manifest = max(manifests, key=lambda m: m.readout.get("decoder", "vae") != "vae")
    if len({m.model["hash"] for m in manifests}) > 1:
        raise SystemExit(f"error: the engine directories {engines} were built from different models")
    if manifest.model["hash"] == RANDOM_SD21_HASH:
        return random_sd21_diffews(), manifest
    folder = Path(manifest.model["source"])
    if model_hash(folder) != manifest.model["hash"]:
        raise SystemExit(f"error: {folder} is not the model {engines} was built from (hash differs)")
    return load_diffews(folder), manifest


def sample_episode(resolution: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """One held-out synthetic 1-shot episode at the model resolution: ((image, mask), query)."""
    source = SyntheticFewShot(SyntheticWorld(resolution=resolution, seed=0), fold=0, split="val", size=60)
    episode = next(EpisodeSampler(source, 1).fixed_episodes(1, seed=3))
    return (episode.support_images[0], episode.support_masks[0].astype(np.uint8)), episode.query_image


def _row(
    name: str, stages: dict, once: float, flops: float, reference_ms: float, peak: float, memory_mb: float
) -> dict:
    total = sum(stages.values())
    return {
        "row": name,
        "stages_ms": stages,
        "peak_extra_mb": memory_mb,
        "query_ms": total,
        "support_once_ms": once,
        "speedup_vs_reference": reference_ms / total,
        "gflop_per_query": flops / 1e9,
        "fraction_of_peak": flops / 1e9 / (total / 1000) / peak,
    }


def assemble(torch_ms: dict, torch_flops: dict, torch_mb: dict, runtimes: list[dict], peak: float) -> list[dict]:
    """The table's rows: per-stage medians, per-query totals, ratios to `reference`, FLOP use, peak memory.

    Args:
        torch_mb: peak extra resident memory per PyTorch stage; a row's figure is its largest stage.
        runtimes: per engine directory and backend, `measure_runtime`'s result (with its "backend" and
            "decoder", "vae", "mask_head" or "mask_decoder").
    """

    def median(t):
        return t["median_ms"]

    query_stages = {s: median(torch_ms[s]) for s in ("query_encode", "query_unet", "readout")}
    reference = {"support": median(torch_ms["support_full"]), **query_stages, "io": 0.0}
    query_flops = torch_flops["query_encode"] + torch_flops["query_unet"]
    reference_ms = sum(reference.values())
    rows = [
        _row(
            "reference",
            reference,
            0.0,
            torch_flops["support_full"] + query_flops + torch_flops["readout"],
            reference_ms,
            peak,
            max(torch_mb[s] for s in ("support_full", "query_encode", "query_unet", "readout")),
        ),
        _row(
            "torch-cached",
            {**reference, "support": 0.0},
            median(torch_ms["support_cached"]),
            query_flops + torch_flops["readout"],
            reference_ms,
            peak,
            max(torch_mb[s] for s in ("query_encode", "query_unet", "readout")),
        ),
    ]
    rows[0]["spread_ms"] = {s: torch_ms[s] for s in ("support_full", "query_encode", "query_unet", "readout")}
    for runtime in runtimes:
        query = median(runtime["query"])
        stages = {"support": 0.0, **{s: query * share for s, share in runtime["split"].items()}}
        stage, suffix = READOUT_ROWS[runtime["decoder"]]
        readout_flops = torch_flops[stage]
        name = runtime["backend"] + suffix
        once, memory = median(runtime["support"]), runtime["query"]["peak_extra_mb"]
        rows.append(_row(name, stages, once, query_flops + readout_flops, reference_ms, peak, memory))
        rows[-1]["spread_ms"] = {"support": runtime["support"], "query": runtime["query"]}
        rows[-1]["engines"], rows[-1]["backend"] = runtime["engines"], runtime["backend"]
    return rows


def markdown(result: dict) -> str:
    lines = [
        f"Model: {result['model']} at {result['resolution']} px, 1 shot, {result['threads']} threads; "
        f"medians of {result['repeats']} after warm-up; fp32 matmul peak {result['peak_gflops']:.0f} GFLOP/s.",
        "",
        "| row | support ms | query encode ms | query UNet ms | read-out ms | io ms | ms per query | speed-up | "
        "GFLOP per query | % of matmul peak | support once ms | peak MB per query |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        s = r["stages_ms"]
        lines.append(
            f"| {r['row']} | {s['support']:.0f} | {s['query_encode']:.0f} | {s['query_unet']:.0f} | "
            f"{s['readout']:.0f} | {s['io']:.0f} | **{r['query_ms']:.0f}** | {r['speedup_vs_reference']:.2f}x | "
            f"{r['gflop_per_query']:.1f} | {100 * r['fraction_of_peak']:.0f} % | {r['support_once_ms']:.0f} | "
            f"{r['peak_extra_mb']:.0f} |"
        )
    memory = result.get("peak_memory_mb")
    if memory:
        lines += [
            "",
            "Peak memory per stage, MB of resident memory above the process's level when the stage starts "
            "(weights already loaded):",
            "",
            "| stage | MB |",
            "| --- | --- |",
        ]
        lines += [f"| torch {stage} | {mb:.0f} |" for stage, mb in memory["torch"].items()]
        for engines, graphs in memory["runtime"].items():
            lines += [f"| runtime {graph} ({engines}) | {mb:.0f} |" for graph, mb in graphs.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Stacked bars: each row's per-query time by stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.6 * len(rows)))
    left = np.zeros(len(rows))
    for stage in STAGES:
        widths = np.array([r["stages_ms"][stage] for r in rows]) / 1000
        ax.barh([r["row"] for r in rows], widths, left=left, label=stage)
        left += widths
    ax.invert_yaxis()
    ax.set_xlabel("seconds per query")
    ax.set_title(f"DiffewS latency per query, {Path(result['model']).name} at {result['resolution']} px")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with replacing_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def ensure_sd21_engines(threads: int | None) -> list[Path]:
    """engines/sd21-random (VAE read-out), -head and -fast (the random mask head and distilled decoder),
    exported once (several minutes and about 17 GB of memory each) and reused."""
    from export import build_engine

    directories = []
    for decoder in ("vae", "head", "fast"):
        folder = SD21_ENGINES if decoder == "vae" else SD21_ENGINES.with_name(f"{SD21_ENGINES.name}-{decoder}")
        if not (folder / "manifest.json").is_file():
            argv = ["--random-arch", "sd21", "--out", str(folder), "--max-shots", "2", "--parity-episodes", "1"]
            argv += ["--readout-decoder", decoder] + (["--threads", str(threads)] if threads else [])
            build_engine.main(argv)
        directories.append(folder)
    return directories


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--engines", type=Path, nargs="+", default=None, help="engine directories of one model (default: by --arch)"
    )
    parser.add_argument("--arch", choices=("default", "sd21"), default="default", help="sd21: random weights")
    parser.add_argument("--out", type=Path, required=True, help="folder for latency.json / .md / .png")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch and runtime threads")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=[b for b in BACKENDS if b != "auto"],
        default=None,
        help="runtime backends, each a row per engine directory "
        "(default: onnxruntime, openvino, and openvino-bf16 where the CPU has bf16)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    args = parser.parse_args(argv)
    outputs = [args.out / f"latency.{ext}" for ext in ("json", "md", "png")]
    if any(p.exists() for p in outputs) and not args.overwrite:
        raise SystemExit(f"error: {args.out} already holds results; pass --overwrite to replace them")
    if args.engines is None:
        args.engines = ensure_sd21_engines(args.threads) if args.arch == "sd21" else [Path("engines/synth-diffews")]
    if args.backends is None:
        args.backends = ["onnxruntime", "openvino"] + (["openvino-bf16"] if cpu_has_bf16() else [])
    torch.set_num_threads(args.threads)

    model, manifest = load_models(args.engines)
    episode = sample_episode(manifest.resolution)
    print(f"measuring {manifest.model['source']} at {manifest.resolution} px ...", flush=True)
    peak = peak_gflops()
    torch_ms, torch_flops, torch_mb = measure_torch(model, episode, args.repeats, args.warmup)
    del model  # the runtime's sessions need the memory at SD 2.1 size
    runtimes = [
        measure_runtime(e, backend, episode, args.repeats, args.warmup, args.threads)
        for e in args.engines
        for backend in args.backends
    ]
    peak = max(peak, peak_gflops())  # before and after: contention only lowers a reading
    result = {
        "model": manifest.model["source"],
        "resolution": manifest.resolution,
        "threads": args.threads,
        "repeats": args.repeats,
        "peak_gflops": peak,
        "rows": assemble(torch_ms, torch_flops, torch_mb, runtimes, peak),
        "runtime_splits": {f"{r['engines']} on {r['backend']}": r["split"] for r in runtimes},
        "peak_memory_mb": {
            "torch": torch_mb,
            "runtime": {
                f"{r['engines']} on {r['backend']}": {
                    "support_encoder": r["support"]["peak_extra_mb"],
                    "query_segmenter": r["query"]["peak_extra_mb"],
                }
                for r in runtimes
            },
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(outputs[0], json.dumps(result, indent=1))
    write_text(outputs[1], markdown(result))
    plot(result, outputs[2])
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
