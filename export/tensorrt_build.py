"""TensorRT plans for an engine directory's ONNX graphs: Polygraphy's API on a GPU machine, a script for the target otherwise.

    python -m export.tensorrt_build engines/synth-diffews              # fp16, attention in fp32
    python -m export.tensorrt_build engines/synth-diffews --precision fp32 --refittable
    python -m export.build_engine --out engines/x --tensorrt           # the same, right after the ONNX export

Every build writes `build_tensorrt.sh` into the directory: the exact `polygraphy convert` (and
`trtexec`) commands that build the same plans on the target, e.g. a Jetson, with the
optimisation profiles taken from the graphs' descriptors (min / opt / max of every dynamic
axis: image size, shots). Where `tensorrt` and a GPU are present, the plans are built here
through Polygraphy and recorded in `manifest.json` (file, sha256, TensorRT version, compute
capability), named `GRAPH.trt<version>.sm<capability>.plan` because a plan only runs with the
TensorRT version and GPU generation that built it.

fp16 plans keep attention in fp32 (`trt_attention_fp32.py`, a copy of which the directory carries
for the script); a timing cache (`timing.cache`) makes rebuilds fast; `--refittable` plans
take new weights without a rebuild.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import shutil
import sys
from pathlib import Path

from export.tensorrt_check import tensorrt_problems
from runtime.contract import GraphSpec
from runtime.files import replacing_file, write_text
from runtime.manifest import Manifest, file_sha256
from runtime.tensorrt_graph import GpuUnavailable, gpu_compute_capability

SCRIPT_FILE = "build_tensorrt.sh"
SETTINGS_FILE = "build_tensorrt.json"  # the script's precision and refittability, read by --register
TIMING_CACHE = "timing.cache"
ATTENTION_PASS = Path(__file__).with_name("trt_attention_fp32.py")
PRECISIONS = ("fp16", "fp32")


class TensorRTUnavailable(RuntimeError):
    """tensorrt, Polygraphy or a CUDA GPU is missing on this machine."""


def plan_file(graph: str, trt_version: str, compute_capability: str) -> str:
    """`support_encoder.trt10.3.0.sm87.plan`: a plan runs only with the TensorRT version and GPU that built it."""
    return f"{graph}.trt{trt_version}.sm{compute_capability.replace('.', '')}.plan"


def _shape_arguments(spec: GraphSpec, style: str) -> list[str]:
    """Profile flags: polygraphy `--trt-min-shapes image:[32,32,3] ...`, trtexec `--minShapes=image:32x32x3,...`."""
    profile = spec.profile()
    args = []
    for index, (poly, trtexec) in enumerate(
        [("--trt-min-shapes", "--minShapes"), ("--trt-opt-shapes", "--optShapes"), ("--trt-max-shapes", "--maxShapes")]
    ):
        if style == "polygraphy":
            args += [poly] + [f"{name}:[{','.join(map(str, shapes[index]))}]" for name, shapes in profile.items()]
        else:
            args.append(f"{trtexec}={spec.profile_text(index)}")
    return args


def polygraphy_command(graph_file: str, spec: GraphSpec, plan: str, precision: str, refittable: bool) -> list[str]:
    """`polygraphy convert` building one plan (run in the engine directory)."""
    command = ["polygraphy", "convert", graph_file, "--convert-to", "trt", "-o", plan]
    command += _shape_arguments(spec, "polygraphy")
    if precision == "fp16":
        command += ["--fp16", "--precision-constraints", "obey", "--trt-npps", ATTENTION_PASS.name]
    command += ["--load-timing-cache", TIMING_CACHE, "--save-timing-cache", TIMING_CACHE]
    if refittable:
        command.append("--refittable")
    return command


def trtexec_command(graph_file: str, spec: GraphSpec, plan: str, precision: str, refittable: bool) -> list[str]:
    """The same build with `trtexec` (fp16 here has no per-layer fp32 attention: prefer polygraphy)."""
    command = ["trtexec", f"--onnx={graph_file}", f"--saveEngine={plan}", *_shape_arguments(spec, "trtexec")]
    command += [f"--timingCacheFile={TIMING_CACHE}"]
    if precision == "fp16":
        command.append("--fp16")
    if refittable:
        command.append("--refit")
    return command


def build_script(manifest: Manifest, precision: str, refittable: bool, problems: dict[str, list[str]]) -> str:
    """A bash script that builds every parseable graph's plan on the machine that will run it.

    Args:
        problems: per graph, why TensorRT's parser would reject it (`tensorrt_problems`); such graphs are skipped.
    """
    lines = [
        "#!/usr/bin/env bash",
        "# Builds this engine directory's TensorRT plans on the machine that will run them (TensorRT >= 10).",
        f"# Written by python -m export.tensorrt_build ({precision}{', refittable' if refittable else ''}).",
        "# Needs: tensorrt and polygraphy (pip install polygraphy) on a CUDA GPU. SM defaults to the first GPU's",
        "# compute capability (nvidia-smi); set it by hand where nvidia-smi is missing: SM=87 (Jetson Orin).",
        "# Afterwards, with this toolkit installed: python -m export.tensorrt_build DIR --register",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "TRT=$(python3 -c 'import tensorrt; print(tensorrt.__version__)')",
        "SM=${SM:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d .)}",
    ]
    alternatives = []
    for name, entry in manifest.graphs.items():
        plan = plan_file(name, "${TRT}", "${SM}")
        if problems.get(name):
            lines.append(f"# {name}: skipped, TensorRT cannot parse it: {problems[name][0]}")
            continue
        lines.append(_join(polygraphy_command(entry.file, entry.spec, plan, precision, refittable)))
        alternatives.append("# " + _join(trtexec_command(entry.file, entry.spec, plan, precision, refittable)))
    lines += ["# Or with trtexec (all layers fp16 with --fp16: SD-2.1-size attention may overflow):", *alternatives]
    lines.append('echo "built: $(ls *.trt${TRT}.sm${SM}.plan)"')
    return "\n".join(lines) + "\n"


def _join(command: list[str]) -> str:
    """Shell-quoted, keeping ${TRT} / ${SM} expandable."""
    return " ".join(f'"{a}"' if "${" in a else shlex.quote(a) for a in command)


def write_build_files(directory: Path, manifest: Manifest, precision: str, refittable: bool) -> Path:
    """Writes `build_tensorrt.sh`, its settings and the fp32-attention pass beside the graphs; returns the script."""
    problems = {name: tensorrt_problems(directory / entry.file) for name, entry in manifest.graphs.items()}
    with replacing_file(directory / ATTENTION_PASS.name, overwrite=True) as tmp:
        shutil.copyfile(ATTENTION_PASS, tmp)
    write_text(directory / SETTINGS_FILE, json.dumps({"precision": precision, "refittable": refittable}))
    script = directory / SCRIPT_FILE
    write_text(script, build_script(manifest, precision, refittable, problems))
    script.chmod(0o755)
    return script


def _tensorrt_modules():
    """(tensorrt, polygraphy.backend.trt) or TensorRTUnavailable naming what is missing."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as err:
        raise TensorRTUnavailable(
            "the tensorrt Python package is not installed (it needs an NVIDIA GPU machine: pip install tensorrt, "
            "or JetPack on a Jetson)"
        ) from err
    try:
        backend = importlib.import_module("polygraphy.backend.trt")
    except ImportError as err:
        raise TensorRTUnavailable("Polygraphy is not installed: pip install polygraphy") from err
    return trt, backend


def build_plans(
    directory: Path, precision: str = "fp16", refittable: bool = False, sm: str | None = None
) -> dict[str, dict]:
    """Builds every graph's plan here (needs tensorrt, Polygraphy and a GPU); returns the manifest entries."""
    trt, poly = _tensorrt_modules()
    manifest = Manifest.read(directory)
    try:
        capability = sm or gpu_compute_capability()
    except GpuUnavailable as err:
        raise TensorRTUnavailable(f"{err} (--sm)") from err
    cache = directory / TIMING_CACHE
    plans = {}
    for name, entry in manifest.graphs.items():
        problems = tensorrt_problems(directory / entry.file)
        if problems:
            raise ValueError(f"{name}: TensorRT cannot parse this graph: " + "; ".join(problems))
        network = poly.NetworkFromOnnxPath(str(directory / entry.file))
        if precision == "fp16":
            attention = importlib.import_module("export.trt_attention_fp32")
            network = poly.PostprocessNetwork(network, func=attention.postprocess)
        profile = poly.Profile()
        for tensor, (low, opt, high) in entry.spec.profile().items():
            profile.add(tensor, min=low, opt=opt, max=high)
        config = poly.CreateConfig(
            fp16=precision == "fp16",
            profiles=[profile],
            precision_constraints="obey" if precision == "fp16" else None,
            load_timing_cache=str(cache) if cache.exists() else None,
            refittable=refittable,
        )
        engine = poly.engine_from_network(network, config=config, save_timing_cache=str(cache))
        plan = plan_file(name, trt.__version__, capability)
        poly.save_engine(engine, str(directory / plan))
        plans[name] = plan_entry(directory, plan, trt.__version__, capability, precision, refittable)
        print(f"built {plan}", flush=True)
    return plans


def plan_entry(directory: Path, plan: str, trt_version: str, capability: str, precision: str, refittable: bool) -> dict:
    return {
        "file": plan,
        "sha256": file_sha256(directory / plan),
        "tensorrt": trt_version,
        "compute_capability": capability,
        "precision": precision,
        "refittable": refittable,
    }


def register_plans(directory: Path, plans: dict[str, dict]) -> None:
    """Records plans in manifest.json under `tensorrt_plans` (graph -> list of plans, one per TensorRT / GPU)."""
    manifest = Manifest.read(directory)
    for graph, entry in plans.items():
        manifest.graph(graph)  # an unknown graph name is an error
        kept = [
            p
            for p in manifest.tensorrt_plans.get(graph, [])
            if (p["tensorrt"], p["compute_capability"]) != (entry["tensorrt"], entry["compute_capability"])
        ]
        manifest.tensorrt_plans[graph] = kept + [entry]
    manifest.write(directory)


def find_built_plans(directory: Path, manifest: Manifest) -> dict[str, dict]:
    """Plans that `build_tensorrt.sh` left in `directory` (named by `plan_file`), as manifest entries."""
    settings = json.loads((directory / SETTINGS_FILE).read_text())
    plans = {}
    for graph in manifest.graphs:
        for path in sorted(directory.glob(f"{graph}.trt*.sm*.plan")):
            version, sm = path.name[len(graph) + len(".trt") : -len(".plan")].rsplit(".sm", 1)
            capability = f"{sm[:-1]}.{sm[-1]}"
            plans[graph] = plan_entry(directory, path.name, version, capability, **settings)
    return plans


def build_tensorrt(
    directory: Path, precision: str = "fp16", refittable: bool = False, sm: str | None = None
) -> dict[str, dict]:
    """Writes `build_tensorrt.sh` (and its settings) into `directory`, then builds and registers the plans here.

    Raises `TensorRTUnavailable` where tensorrt, Polygraphy or a GPU is missing; the script is
    written all the same, for the target machine.
    """
    directory = Path(directory)
    script = write_build_files(directory, Manifest.read(directory), precision, refittable)
    try:
        plans = build_plans(directory, precision, refittable, sm)
    except TensorRTUnavailable as err:
        raise TensorRTUnavailable(
            f"{err}.\nOn the target machine run {script} (it holds the exact polygraphy / trtexec commands), "
            "then `python -m export.tensorrt_build DIR --register`."
        ) from err
    register_plans(directory, plans)
    return plans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engines", type=Path, help="engine directory from export.build_engine")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16")
    parser.add_argument("--refittable", action="store_true", help="plans whose weights can be swapped in place")
    parser.add_argument(
        "--register", action="store_true", help="record plans built by build_tensorrt.sh in manifest.json"
    )
    parser.add_argument("--sm", default=None, help="GPU compute capability, e.g. 8.7 (default: from nvidia-smi)")
    args = parser.parse_args(argv)
    try:
        manifest = Manifest.read(args.engines)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if args.register:
        script = args.engines / SCRIPT_FILE
        if not (args.engines / SETTINGS_FILE).is_file():
            raise SystemExit(
                f"error: {args.engines} has no {SETTINGS_FILE}: write the script with `python -m "
                f"export.tensorrt_build {args.engines}`, run {script} on the target, then --register"
            )
        plans = find_built_plans(args.engines, manifest)
        if not plans:
            raise SystemExit(f"error: no *.plan files in {args.engines}; run {script} there first")
        register_plans(args.engines, plans)
        print(f"registered {', '.join(p['file'] for p in plans.values())} in {args.engines}/manifest.json")
        return 0
    try:
        build_tensorrt(args.engines, args.precision, args.refittable, args.sm)
    except TensorRTUnavailable as err:
        print(f"TensorRT plans not built here: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
