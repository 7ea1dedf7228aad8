"""Where OpenVINO spends a query graph's time, by kind of executed node, with its snippets off (the runtime's way) and on.

    python -m benchmarks.openvino_ops --engines engines/sd21-random-mask_head --precision bf16 --threads 2 \\
        --out benchmarks/results/openvino-ops-sd21-default-amx
    python -m benchmarks.openvino_ops --engines engines/A engines/B --snippets off ...   # two builds of one model

`benchmarks.latency` splits a query by stage (encoder, UNet, read-out); this splits it by what
the CPU plugin executes: each node's type and kernel (`Convolution/brgconv_avx512_amx_bf16`,
`Softmax/jit_avx512_bf16`, `Reorder/...` for the layout changes the plugin inserts), from its
per-node counters (`PERF_COUNT`). The query graph is compiled twice, as the runtime compiles it
(`runtime.openvino_graph.openvino_config`) with OpenVINO's snippets off, as the runtime has them
in bf16, and with them on (its fused attention and element-wise subgraphs, `Subgraph/...`); both
run the same feed interleaved: one held-out query at the model resolution against a 1-shot bank. Reported per
compilation: median and worst wall ms over `--runs`, and the last run's time per node kind with
what the counters add up to (on a large graph close to the wall time; on a tiny one with dynamic
shapes they can add up to more, so read their shares there with care).
Several engine directories of one model (builds with other export options, e.g. `--attention-block`)
are compiled and run the same way, all interleaved, so that a difference between them is not the
machine's drift between two runs; `--snippets off` compiles each only as the runtime does.
Written: `ops.json` and `ops.md`, with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_line, machine_record
from benchmarks.repeatability import bank_and_query, snippet_requests
from benchmarks.report import write_report
from runtime.cli import refuse_to_overwrite, reporting_errors
from runtime.manifest import Manifest
from runtime.openvino_graph import cpu_has_bf16

# name -> snippets off? The runtime compiles bf16 graphs with them off (runtime.openvino_graph).
COMPILATIONS = {"snippets off (the runtime)": True, "snippets on": False}
SNIPPETS = {"both": COMPILATIONS, "off": {"snippets off (the runtime)": True}}


def check_one_model(engines: list[Path]) -> None:
    """Engine directories compared on one feed must take the same bank: one model, the same fused layers."""
    if len(set(engines)) < len(engines):
        raise ValueError(f"an engine directory is named twice in {[str(e) for e in engines]}")
    manifests = [Manifest.read(e, verify=False) for e in engines]
    first = manifests[0]
    for directory, manifest in zip(engines[1:], manifests[1:]):
        if manifest.model["hash"] != first.model["hash"] or manifest.diffews.layers != first.diffews.layers:
            raise ValueError(
                f"{directory} was built from another model than {engines[0]}: one support bank cannot feed both; "
                "compare builds of one model"
            )


def compilation_plan(engines: list[Path], snippets: str) -> list[tuple[str, Path, bool]]:
    """(name, engine directory, snippets off?) of each compilation; names carry the directory when there are several."""
    settings = SNIPPETS[snippets]
    return [
        (name if len(engines) == 1 else f"{directory}, {name}", directory, off)
        for directory in engines
        for name, off in settings.items()
    ]


def node_kind_ms(profiling_info) -> dict[str, float]:
    """ms per `node type/kernel` of one run's per-node counters, largest first."""
    totals = defaultdict(float)
    for node in profiling_info:
        totals[f"{node.node_type}/{node.exec_type}"] += 1000 * node.real_time.total_seconds()
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def measure(engines: list[Path], precision: str, runs: int, threads: int | None, snippets: str = "both") -> dict:
    check_one_model(engines)
    segmenter, query = bank_and_query(engines[0], threads)
    feed = {"image": query, "threshold": np.array(segmenter.threshold, np.float32), **segmenter.bank}
    requests = {
        name: snippet_requests(directory, precision, threads, {name: off}, perf_count=True)[name]
        for name, directory, off in compilation_plan(engines, snippets)
    }
    times = {name: [] for name in requests}
    for request in requests.values():
        request.infer(feed)  # warm-up: the first run of a shape prepares its kernels
    for _ in range(runs):
        for name, request in requests.items():  # interleaved, so machine noise hits both alike
            start = time.perf_counter()
            request.infer(feed)
            times[name].append(1000 * (time.perf_counter() - start))
    compilations = {}
    for name, request in requests.items():
        kinds = node_kind_ms(request.profiling_info)
        whole = sum(kinds.values()) or 1.0
        compilations[name] = {
            "median_ms": statistics.median(times[name]),
            "max_ms": max(times[name]),
            "counted_ms": sum(kinds.values()),
            "node_kinds": {kind: {"ms": ms, "share": ms / whole} for kind, ms in kinds.items()},
        }
    return {
        "engines": ", ".join(str(e) for e in engines),
        "precision": precision,
        "runs": runs,
        "threads": threads,
        "machine": machine_record(threads),
        "compilations": compilations,
    }


def markdown(result: dict, top: int = 12) -> str:
    lines = [
        f"OpenVINO {result['precision']} query graph of `{result['engines']}`, {result['runs']} interleaved runs per "
        f"compilation after one warm-up; {machine_line(result['machine'])}.",
        "",
        "| compilation | median ms | worst ms | ms the counters add up to (last run) |",
        "| --- | --- | --- | --- |",
    ]
    for name, c in result["compilations"].items():
        lines.append(f"| {name} | {c['median_ms']:.1f} | {c['max_ms']:.1f} | {c['counted_ms']:.1f} |")
    for name, c in result["compilations"].items():
        lines += ["", f"Time by node kind, {name} (the last run's counters, the {top} largest):", ""]
        lines += ["| node type / kernel | ms | share |", "| --- | --- | --- |"]
        for kind, k in list(c["node_kinds"].items())[:top]:
            lines.append(f"| {kind} | {k['ms']:.1f} | {100 * k['share']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=Path, nargs="+", required=True, help="one model's engine directories")
    parser.add_argument(
        "--snippets", choices=tuple(SNIPPETS), default="both", help="compile with snippets off and on, or off only"
    )
    parser.add_argument("--precision", choices=("bf16", "f32"), default="bf16")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: OpenVINO's)")
    parser.add_argument("--out", type=Path, default=None, help="folder for ops.json / ops.md")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.out is not None:
        refuse_to_overwrite([args.out / "ops.json", args.out / "ops.md"], args.overwrite)
    with reporting_errors():  # a bad engine directory, or bf16 on a CPU without it: one line, an exit code
        if args.precision == "bf16" and not cpu_has_bf16():
            raise RuntimeError("this CPU has no bf16 instructions (AVX512-BF16 or AMX); use --precision f32")
        result = measure(args.engines, args.precision, args.runs, args.threads, args.snippets)
        print(markdown(result))
        if args.out is not None:
            write_report(args.out, "ops", result, markdown(result), overwrite=args.overwrite)
        return 0


if __name__ == "__main__":
    sys.exit(main())
