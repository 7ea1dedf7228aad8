"""`python -m export.build_engine`: the command line that builds an engine directory (DiffewS, or SLiMe with --slime).

    python -m export.build_engine --out engines/synth-diffews          # the shipped default model
    python -m export.build_engine --model runs/diffews-fold0 --out engines/fold0 --max-shots 5
    python -m export.build_engine --model DIR --out ENGINE_DIR --precision fp16 --optimize
    python -m export.build_engine --out engines/x --tensorrt      # + TensorRT plans, or their build script
    python -m export.build_engine --out engines/x --query-batch 8  # + a graph taking 1-8 queries per run
    python -m export.build_engine --slime car.safetensors --out engines/car-parts   # SLiMe

A thin layer over `export.diffews_build.build_diffews` and `export.slime_build.build_slime`
(call those from Python); `--tensorrt` then runs `export.tensorrt_build.build_tensorrt`. A flag
that belongs to the other method is an error, never silently ignored. Errors are one line
(`error: ...`, exit status 1); nothing is left half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export.engine_dir import TensorRTParseError
from export.parity import ParityError
from export.tensorrt_build import TensorRTUnavailable
from runtime.files import OutputError
from runtime.profiles import PROFILES
from runtime.sections import OLD_READOUT_NAMES, QUERY_ENCODERS, READOUTS
from runtime.support_selection import DEFAULT_RULE, RULES

# Flags of one method only: flag -> its argparse destination. Their defaults are None, so that
# "given" can be told from "left at the default".
DIFFEWS_ONLY = {
    "--model": "model",
    "--random-arch": "random_arch",
    "--max-shots": "max_shots",
    "--resolution": "resolution",
    "--profile": "profile",
    "--readout": "readout",
    "--query-encoder": "query_encoder",
    "--parity-episodes": "parity_episodes",
    "--selection": "selection",
    "--selection-budget": "selection_budget",
    "--selection-seed": "selection_seed",
    "--query-batch": "query_batch",
    "--attention-block": "attention_block",
}
SLIME_ONLY = {
    "--base-path": "base_path",
    "--patches-per-side": "patches_per_side",
    "--patch-size": "patch_size",
    "--parity-images": "parity_images",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="engine directory to write")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    p.add_argument("--min-side", type=int, default=32, help="smallest image side the graphs accept")
    p.add_argument("--max-side", type=int, default=4096, help="largest image side the graphs accept")
    p.add_argument("--optimize", action="store_true", help="fuse operators with ONNX Runtime's transformer optimizer")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the parity runs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing engine directory")
    trt = p.add_argument_group("TensorRT")
    trt.add_argument(
        "--tensorrt",
        action="store_true",
        help="also build TensorRT plans (export.tensorrt_build; without tensorrt and a GPU: the build script only)",
    )
    trt.add_argument("--trt-precision", choices=("fp16", "fp32"), default="fp16", help="TensorRT plan precision")
    trt.add_argument("--refittable", action="store_true", help="TensorRT plans whose weights can be swapped")

    diffews = p.add_argument_group("DiffewS (the default)")
    diffews.add_argument("--model", type=Path, default=None, help="DiffewS model folder (default: the shipped one)")
    diffews.add_argument(
        "--random-arch",
        choices=("sd21",),
        default=None,
        help="export this architecture with random weights instead of --model (size and speed checks)",
    )
    diffews.add_argument("--max-shots", type=int, default=None, help="largest support set taken (10)")
    diffews.add_argument("--resolution", type=int, default=None, help="model resolution (default: the model's own)")
    diffews.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        default=None,
        help="the query graph's trade-off, recorded in manifest.json: exact (the method's VAE encoder and decoder, "
        "fp32 even where backend auto could use bf16: the PyTorch pipeline's masks), default (the mask_head "
        "read-out where the model has one), fast (mask_decoder read-out and distilled query encoder). "
        "--readout / --query-encoder override a part (recorded as custom). docs/diffews.md has each one's figures",
    )
    diffews.add_argument(
        "--readout",
        "--readout-decoder",
        choices=("auto", *READOUTS, *OLD_READOUT_NAMES),
        default=None,
        help="mask read-out in the query graph: vae (the method's full VAE decoder), mask_head (the VAE decoder to "
        "half resolution and the model's trained mask_head/: about 35 %% less decoder work), mask_decoder (the "
        "model's distilled mask_decoder/: the fastest, less faithful edges); auto (default): the profile's (the "
        "default profile's is mask_head where the model has one, else vae). docs/readouts.md gives each one's agreement",
    )
    diffews.add_argument(
        "--query-encoder",
        choices=("auto", *QUERY_ENCODERS),
        default=None,
        help="what encodes the query in the query graph: vae (the method's VAE encoder), distilled (the "
        "model's query_encoder/, trained by python -m train.query_encoder: about 9x fewer FLOPs than the VAE "
        "encoder); auto (default): the profile's. The support always uses the VAE. docs/diffews.md gives its "
        "agreement",
    )
    diffews.add_argument("--parity-episodes", type=int, default=None, help="held-out episodes (1-3) for parity (3)")
    diffews.add_argument(
        "--selection",
        choices=RULES,
        default=None,
        help="how a support set of more shots than the budget is reduced, once, before queries read it: "
        "foreground (foreground tokens first, the rest spread over every shot), stratified (spread over every "
        "region of every shot), uniform (the paper's random sampling, seeded), all (every token, the released "
        "code's behaviour: query cost grows with shots). Default: "
        f"{DEFAULT_RULE} (docs/diffews.md, more shots)",
    )
    diffews.add_argument(
        "--selection-budget",
        type=int,
        default=None,
        help="shots' worth of support tokens kept per layer (default: the shot count the model was trained with, "
        "else 1); the query graph takes at most this many shots",
    )
    diffews.add_argument("--selection-seed", type=int, default=None, help="seed of the uniform rule (0)")
    diffews.add_argument(
        "--attention-block",
        type=int,
        default=None,
        help="queries per block in the graphs' self-attention: the same attention, with one block's scores "
        "written at a time so that they stay in the CPU's cache; 0: all queries at once. Default: 256 "
        "(docs/benchmarks.md, blocked attention)",
    )
    diffews.add_argument(
        "--query-batch",
        type=int,
        default=None,
        help="also build query_batch_segmenter, the query graph taking 1 to N queries of one size per run "
        "(segment_batch, GPU throughput); it holds its own copy of the query graph's weights. Default: not built",
    )

    slime = p.add_argument_group("SLiMe")
    slime.add_argument(
        "--slime", type=Path, default=None, help="build a SLiMe part segmenter from this embedding file instead"
    )
    slime.add_argument("--base-path", default=None, help="local weights folder of the embedding's base (sd21-base)")
    slime.add_argument("--patches-per-side", type=int, default=None, help="default n x n crops per image (1)")
    slime.add_argument("--patch-size", type=int, default=None, help="default crop side (the whole image)")
    slime.add_argument("--parity-images", type=int, default=None, help="synthetic part scenes (1-3) for parity (3)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.slime is not None:
        wrong = [flag for flag, dest in DIFFEWS_ONLY.items() if getattr(args, dest) is not None]
        method = "with --slime"
    else:
        wrong = [flag for flag, dest in SLIME_ONLY.items() if getattr(args, dest) is not None]
        method = "without --slime (a DiffewS build)"
    if wrong:
        one = len(wrong) == 1
        p.error(f"{', '.join(wrong)} {'does' if one else 'do'} not apply {method}; drop {'it' if one else 'them'}")
    if args.tensorrt and args.optimize:
        p.error("--optimize writes ONNX Runtime-only operators that TensorRT cannot parse; drop it for --tensorrt")
    if args.random_arch and args.model is not None:
        p.error("--random-arch builds random weights instead of --model; give one of them")
    if args.readout in OLD_READOUT_NAMES:
        print(f"note: --readout {args.readout} is now called {OLD_READOUT_NAMES[args.readout]}", file=sys.stderr)
        args.readout = OLD_READOUT_NAMES[args.readout]
    return args


def build(args: argparse.Namespace) -> Path:
    """Runs the build the parsed command line asks for; returns the engine directory."""
    from export.diffews_build import build_diffews
    from export.slime_build import build_slime

    common = dict(
        min_side=args.min_side,
        max_side=args.max_side,
        precision=args.precision,
        optimize=args.optimize,
        threads=args.threads,
        tensorrt=args.tensorrt,
        overwrite=args.overwrite,
    )
    if args.slime is not None:
        given = {dest: getattr(args, dest) for dest in SLIME_ONLY.values() if getattr(args, dest) is not None}
        return build_slime(args.out, embedding=args.slime, **given, **common)
    given = {dest: getattr(args, dest) for dest in DIFFEWS_ONLY.values() if getattr(args, dest) is not None}
    return build_diffews(args.out, **given, **common)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = build(args)
    except (ValueError, OutputError, ParityError, TensorRTParseError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    if args.tensorrt:
        from export.tensorrt_build import build_tensorrt

        try:
            build_tensorrt(out, args.trt_precision, args.refittable)
        except TensorRTUnavailable as err:
            print(f"TensorRT plans not built here: {err}", file=sys.stderr)
            print(f"the ONNX engine directory {out} is complete; its TensorRT plans are not", file=sys.stderr)
    print(json.dumps({"out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
