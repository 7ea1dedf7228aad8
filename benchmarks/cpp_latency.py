"""The C++ host against the Python runtime per query, on the same engines and backend, measured side by side.

    python -m benchmarks.cpp_latency --engines engines/synth --parts-engines engines/mushroom \\
        --out benchmarks/results/cpp-latency-synth

For each query size (and the SLiMe directory, if given), `--rounds` interleaved rounds: the C++
host (`diffseg-latency`, a fresh process: engines opened, supports encoded, `--warmup` untimed
calls) times `--calls` segment() calls, then this process does the same with the Python runtime.
Images are decoded once on both sides; a call is segment() alone. Each side's per-call times are
pooled over the rounds: p50 / p90 / max, and the Python p50 over the C++ p50. Writes
cpp_latency.json and cpp_latency.md into --out. A benchmark: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.cpp_host import build_cpp_host
from benchmarks.machine import cpu_features, cpu_name, percentiles
from benchmarks.report import write_report
from runtime.cli import refuse_to_overwrite, reporting_errors
from runtime.fewshot import FewShotSegmenter
from runtime.images import load_image
from runtime.parts import PartSegmenter
from segdata.samples import episode_at_sizes, held_out_episodes

# (width, height): the shipped model's side, non-square, larger.
SIZES = [(128, 128), (160, 96), (333, 257)]


def python_times(segment, image: np.ndarray, warmup: int, calls: int) -> list[float]:
    """Milliseconds of `calls` segment(image) calls after `warmup` untimed ones."""
    for _ in range(warmup):
        segment(image)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        segment(image)
        times.append((time.perf_counter() - start) * 1000)
    return times


def cpp_times(command: list) -> list[float]:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)["ms"]


def summary(name: str, cpp: list[float], python: list[float]) -> dict:
    c, p = percentiles(cpp), percentiles(python)
    return {"row": name, "cpp": c, "python": p, "python_over_cpp_p50": p["p50_ms"] / c["p50_ms"]}


def measure(args: argparse.Namespace, work: Path) -> dict:
    host = build_cpp_host(args.build)
    latency = host.tool("latency")
    common = [args.backend, args.threads or 0, args.warmup, args.calls]
    (episode,) = held_out_episodes(128, shots=args.shots, count=1, seed=3)
    rows = []
    python = FewShotSegmenter.from_dir(args.engines, backend=args.backend, threads=args.threads)
    for w, h in SIZES:
        sized = episode_at_sizes(episode, (w, h), [(128, 128)] * args.shots)
        files = []
        for s, (image, mask) in enumerate(zip(sized.support_images, sized.support_masks)):
            files += [work / f"support{s}.png", work / f"mask{s}.png"]
            Image.fromarray(image).save(files[-2])
            Image.fromarray(mask.astype(np.uint8) * 255).save(files[-1])
        query = work / f"query{w}x{h}.png"
        Image.fromarray(sized.query_image).save(query)
        python.set_support(sized.support_images, [m.astype(np.uint8) for m in sized.support_masks])
        pixels = load_image(query)
        cpp, py = [], []
        for _ in range(args.rounds):
            cpp += cpp_times([latency, "fewshot", args.engines, *common, query, *files])
            py += python_times(python.segment, pixels, args.warmup, args.calls)
        rows.append(summary(f"DiffewS query {w}x{h}, {args.shots} shot(s)", cpp, py))
        print(rows[-1]["row"], f"python / C++ p50: {rows[-1]['python_over_cpp_p50']:.3f}", flush=True)
    if args.parts_engines:
        parts = PartSegmenter.from_dir(args.parts_engines, backend=args.backend, threads=args.threads)
        image = np.asarray(Image.fromarray(episode.query_image).resize((200, 150)))
        Image.fromarray(image).save(work / "parts.png")
        cpp, py = [], []
        for _ in range(args.rounds):
            cpp += cpp_times([latency, "parts", args.parts_engines, *common, work / "parts.png"])
            py += python_times(parts.segment, image, args.warmup, args.calls)
        rows.append(summary(f"SLiMe parts 200x150, {len(parts.patching.origins())} crop(s)", cpp, py))
        print(rows[-1]["row"], f"python / C++ p50: {rows[-1]['python_over_cpp_p50']:.3f}", flush=True)
    return {
        "command": "python -m benchmarks.cpp_latency " + " ".join(sys.argv[1:]),
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "backend": python.backend,
        "threads": args.threads or "the backend's default",
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"# C++ host against the Python runtime per call: backend {result['backend']}",
        "",
        f"`{result['command']}`",
        "",
        f"{result['cpu']} ({', '.join(result['cpu_features']) or 'no AVX2'}), {result['cores']} cores; "
        f"threads: {result['threads']}; {result['rounds']} interleaved rounds of {result['calls_per_round']} calls "
        "per side (images decoded once; a call is segment() alone).",
        "",
        "| row | C++ p50 / p90 / max ms | Python p50 / p90 / max ms | Python p50 / C++ p50 |",
        "| --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        c, p = row["cpp"], row["python"]
        lines.append(
            f"| {row['row']} | {c['p50_ms']:.1f} / {c['p90_ms']:.1f} / {c['max_ms']:.1f} | "
            f"{p['p50_ms']:.1f} / {p['p90_ms']:.1f} / {p['max_ms']:.1f} | {row['python_over_cpp_p50']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, required=True, help="a DiffewS engine directory")
    parser.add_argument("--parts-engines", type=Path, default=None, help="a SLiMe engine directory (optional)")
    parser.add_argument("--backend", choices=["openvino", "openvino-bf16"], default="openvino")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: OpenVINO's)")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per side and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before each round's timed ones")
    parser.add_argument("--build", type=Path, default=Path("build/cpp"), help="the C++ host's build folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    refuse_to_overwrite([args.out / "cpp_latency.json", args.out / "cpp_latency.md"], args.overwrite)
    with reporting_errors(), tempfile.TemporaryDirectory() as work:
        result = measure(args, Path(work))
        write_report(args.out, "cpp_latency", result, markdown(result))
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
