"""Per-stage latency of DiffewS: the authors' way (PyTorch eager) against this toolkit's runtime, measured in one run.

    python -m benchmarks.latency --engines engines/synth-diffews --out bench/synth
    python -m benchmarks.latency --arch sd21 --out bench/sd21      # SD 2.1 architecture, random weights

Rows (one query against a fixed support set, 1 shot by default, at the model resolution):

| row | what a query costs |
| --- | --- |
| `reference` | the released code's way: every query re-encodes the support image and mask, runs the whole support UNet (not stopped after the last self-attention), then encodes the query, runs the query UNet and the full VAE decoder; PyTorch eager, fp32 |
| `torch-cached` | the same PyTorch model with the support bank computed once: query encode, UNet, decode |
| `onnxruntime`, `openvino`, `openvino-bf16` | each engine directory's `query_segmenter` graph (bank computed once by `support_encoder`) on that CPU backend (`--backends`); `, mask_head read-out` / `, mask_decoder read-out` for a directory built with the model's learned read-outs, `, distilled encoder` for one built with its distilled query encoder |

Stages: `support` (per query in `reference`, once otherwise), `query_encode`, `query_unet`,
`readout` (mask decode and threshold), plus `io` in the runtime (in-graph resizing and casts).
PyTorch stages are timed one by one; the runtime's query graph is timed whole and split by
stage with ONNX Runtime's profiler or OpenVINO's per-node counters (each exported node's name
scope tells its stage). Medians after warm-up, with min and max; ratios against `reference`
come from this same run. Each runtime row runs in a fresh process that never loads torch, as the
runtime is deployed (`benchmarks.latency_runtime`); `--in-process` measures them here instead.
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
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.latency_report import assemble, markdown, plot
from benchmarks.latency_runtime import (
    measure_runtime,
    measure_runtime_in_fresh_process,
    peak_extra_mb,
    sample_episode,
    timed,
)
from benchmarks.machine import machine_record
from modeling.diffews import DiffewsModel
from modeling.diffews_folder import load_diffews, source_folder
from modeling.presets import RANDOM_ARCHS, ModelFolderError, random_diffews
from runtime.backends import BACKENDS
from runtime.cli import refuse_to_overwrite, reporting_errors
from runtime.files import write_text
from runtime.manifest import EngineDirError, Manifest
from runtime.openvino_graph import cpu_has_bf16
from runtime.sections import READOUTS

SD21_ENGINES = Path("engines/sd21-random")
# (read-out, query encoder) of the SD 2.1 engines `--arch sd21` measures
SD21_VARIANTS = (*((readout, "vae") for readout in READOUTS), ("mask_head", "distilled"), ("mask_decoder", "distilled"))


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

    def query_encode_distilled():  # times and counts it; the UNet keeps reading the VAE's latent
        model.encode_query(x_query, "distilled")

    def query_unet():
        state["out"] = model.predict_mask_latents(state["z"], state["bank"])

    def readout():
        state["mask"] = model.decode_masks(state["out"])

    def readout_mask_head():
        state["mask"] = model.decode_masks(state["out"], "mask_head")

    def readout_mask_decoder():
        state["mask"] = model.decode_masks(state["out"], "mask_decoder")

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
        stages["readout_mask_head"] = readout_mask_head
    if model.mask_decoder is not None:
        stages["readout_mask_decoder"] = readout_mask_decoder
    if model.query_encoder is not None:
        stages["query_encode_distilled"] = query_encode_distilled
    return stages


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


# --------------------------------------------------------------------------- the run
def load_models(engines: list[Path]) -> tuple[DiffewsModel, Manifest]:
    """The PyTorch model the engines were built from (SDPA attention, as eager users run it)."""
    try:
        manifests = [Manifest.read(e, verify=False) for e in engines]
    except EngineDirError as err:
        raise SystemExit(f"error: {err}") from err
    # The source of a learned network's build carries the network its PyTorch FLOPs are counted on.
    manifest = max(manifests, key=lambda m: (m.diffews.readout.decoder != "vae", m.diffews.query_encoder != "vae"))
    if len({m.model["hash"] for m in manifests}) > 1:
        raise SystemExit(f"error: the engine directories {engines} were built from different models")
    random = {arch.hash: name for name, arch in RANDOM_ARCHS.items()}
    if manifest.model["hash"] in random:
        return random_diffews(random[manifest.model["hash"]]), manifest
    try:
        return load_diffews(source_folder(manifest.model)), manifest
    except ModelFolderError as err:
        raise SystemExit(f"error: {engines}: {err}") from err


def sd21_engines(readout: str, query_encoder: str = "vae") -> Path:
    """Where the random SD 2.1 engines of a read-out and query encoder live: engines/sd21-random[-R][-distilled]."""
    suffix = ("" if readout == "vae" else f"-{readout}") + ("" if query_encoder == "vae" else f"-{query_encoder}")
    return SD21_ENGINES.with_name(SD21_ENGINES.name + suffix)


def ensure_sd21_engines(threads: int | None, variants=SD21_VARIANTS) -> list[Path]:
    """The random SD 2.1 engines of each (read-out, query encoder) in `variants` (`sd21_engines`),
    exported once (several minutes and about 17 GB of memory each) and reused."""
    from export.diffews_build import build_diffews

    directories = []
    for readout, encoder in variants:
        folder = sd21_engines(readout, encoder)
        if not (folder / "manifest.json").is_file():
            build_diffews(
                folder,
                random_arch="sd21",
                max_shots=2,
                parity_episodes=1,
                readout=readout,
                query_encoder=encoder,
                threads=threads,
            )
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
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure the runtime rows in this process, after the PyTorch rows (by default each runs in a "
        "fresh process without torch, as the runtime is deployed; see benchmarks.latency_runtime)",
    )
    args = parser.parse_args(argv)
    outputs = [args.out / f"latency.{ext}" for ext in ("json", "md", "png")]
    refuse_to_overwrite(outputs, args.overwrite)
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
    measure_row = measure_runtime if args.in_process else measure_runtime_in_fresh_process
    with reporting_errors():  # a row that fails (a backend this CPU lacks): one line, an exit code
        runtimes = [
            measure_row(e, backend, args.repeats, args.warmup, args.threads)
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
        "machine": machine_record(args.threads),
        "runtime_process": "this process, after the PyTorch rows"
        if args.in_process
        else "a fresh one per row, without torch",
        "rows": assemble(torch_ms, torch_flops, torch_mb, runtimes, peak),
        "runtime_splits": {f"{r['engines']} on {r['backend']}": r["split"] for r in runtimes},
        "runtime_processes": {f"{r['engines']} on {r['backend']}": r["process"] for r in runtimes},
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
