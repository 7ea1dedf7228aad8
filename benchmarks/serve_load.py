"""The Triton server under load against the in-process runtime, measured side by side in one run.

    python -m benchmarks.serve_load --engines engines/synth --out benchmarks/results/serve-synth
    python -m benchmarks.serve_load --engines engines/sd21-random-mask_head --requests 12 \
        --concurrency 1 2 4 --per-round 3 --out benchmarks/results/serve-sd21-random

One support set (1 shot) and three queries at the model resolution (held-out synthetic
episodes), the server started here on loopback (`runtime.serve.process.ServerProcess`,
`--instances`), the same engines and backend in this process.

1. Overhead at concurrency 1: `--rounds` rounds, each running `--per-round` queries in this
   process, then the same over HTTP, then over gRPC (interleaved, so a noisy neighbour hits
   every row alike); per row p50 / p95 / p99 / max, and the server's p50 less the runtime's.
2. Load: for each `--concurrency` c, c client threads (their own connection each) share
   `--requests` requests; throughput, latency percentiles, errors, and the server's resident
   memory (its whole process group: Python, tritonserver, backend stubs) sampled every 0.25 s.
   The in-process runtime with c threads is measured beside it.
Every mask returned is compared with the in-process runtime's for the same query. Writes
serve_load.json and serve_load.md into --out. A benchmark: nothing here is asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_name, percentiles
from runtime.cli import refuse_to_overwrite
from runtime.fewshot import FewShotSegmenter
from runtime.files import write_text
from runtime.serve.client import SegmentationClient
from runtime.serve.process import ServerProcess, serve_python
from segdata.samples import held_out_episodes


def resident_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class MemorySampler:
    """The server group's resident set every `period_s` while the block runs."""

    def __init__(self, server: ServerProcess, period_s: float = 0.25):
        self.server, self.period_s, self.samples = server, period_s, []
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(resident_mb(self.server.pids()))
            self._stop.wait(self.period_s)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(resident_mb(self.server.pids()))


def run_load(call, count: int, workers: int, make_state=lambda: None) -> dict:
    """`count` calls of call(state, i) -> ok over `workers` threads; latency and throughput."""
    latencies, failures, wrong = [], [], []
    counter = iter(range(count))
    lock = threading.Lock()

    def work():
        state = make_state()
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    ok = call(state, i)
                except Exception as err:  # noqa: BLE001 - a benchmark counts errors and goes on
                    failures.append(repr(err)[:200])
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
                if not ok:
                    wrong.append(i)
        finally:
            if state is not None:
                state.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    row = percentiles(latencies) if latencies else {"n": 0}
    return {
        **row,
        "errors": len(failures),
        "wrong_masks": len(wrong),
        "throughput_qps": len(latencies) / wall,
        "wall_s": wall,
        "first_errors": failures[:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--instances", type=int, default=2, help="the server's model instances")
    parser.add_argument("--backend", default=None, help="both sides (default: the runtime's own, auto)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    # SIGTERM (timeout, a job scheduler) unwinds like Ctrl+C, so the server's process group is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    refuse_to_overwrite([args.out / "serve_load.json", args.out / "serve_load.md"], args.overwrite)

    backend = {"backend": args.backend} if args.backend else {}
    runtime = FewShotSegmenter.from_dir(args.engines, **backend)
    side = runtime.manifest.resolution
    (episode,) = held_out_episodes(side, 1, 1, seed=3, pool=100, factors=((1.0, 1.0),))
    support = (list(episode.support_images), list(episode.support_masks))
    queries = [ep.query_image for ep in held_out_episodes(side, 1, 3, seed=7, pool=100, factors=((1.0, 1.0),))]
    bank = runtime.encode_support(*support)
    expected = [runtime.segment(q, support=bank) for q in queries]
    # This side only answers queries from here on: dropping its support encoder lets this process
    # and the server each hold an SD 2.1-size model within this machine's 24 GB.
    runtime.support_encoder = None
    gc.collect()

    def in_process(_, i):
        return np.array_equal(runtime.segment(queries[i % 3], support=bank), expected[i % 3])

    store = Path(tempfile.mkdtemp(prefix="serve-load-banks-"))
    server_args = ["--engines", str(args.engines), "--instances", str(args.instances), "--bank-store", str(store)]
    if args.backend:
        server_args += ["--backend", args.backend]
    log = args.out / "server.log"
    args.out.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    results = {"command": "python -m benchmarks.serve_load " + " ".join(argv or sys.argv[1:])}
    results["machine"] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "backend": runtime.backend,
        "server_python": serve_python(),
        "instances": args.instances,
        "resolution": side,
        "bank_mb": sum(a.nbytes for a in bank.arrays.values()) / 2**20,
    }
    with ServerProcess(server_args, log=log, ready_s=900) as server:
        with SegmentationClient(server.http_url) as client:
            key = client.register_support(*support)
            for q, mask in zip(queries, expected):  # warm-up, and the first correctness check
                assert np.array_equal(client.segment(key, q), mask), "the server's mask differs from the runtime's"

        def remote(protocol):
            url = server.http_url if protocol == "http" else server.grpc_url
            return (lambda: SegmentationClient(url, protocol, timeout_s=600)), (
                lambda client, i: np.array_equal(client.segment(key, queries[i % 3]), expected[i % 3])
            )

        rows = {"in-process": [], "server, HTTP": [], "server, gRPC": []}
        wrong = 0
        http_state, grpc_state = remote("http"), remote("grpc")
        http_client, grpc_client = http_state[0](), grpc_state[0]()
        for _ in range(args.rounds):
            for name, call, state in (
                ("in-process", in_process, None),
                ("server, HTTP", http_state[1], http_client),
                ("server, gRPC", grpc_state[1], grpc_client),
            ):
                for i in range(args.per_round):
                    start = time.perf_counter()
                    ok = call(state, i)
                    rows[name].append((time.perf_counter() - start) * 1000)
                    wrong += not ok
        http_client.close()
        grpc_client.close()
        overhead = {name: percentiles(values) for name, values in rows.items()}
        for name in ("server, HTTP", "server, gRPC"):
            overhead[name]["overhead_p50_ms"] = overhead[name]["p50_ms"] - overhead["in-process"]["p50_ms"]
            overhead[name]["ratio_p50"] = overhead[name]["p50_ms"] / overhead["in-process"]["p50_ms"]
        results["concurrency_1_side_by_side"] = overhead
        results["concurrency_1_wrong_masks"] = wrong
        results["load"] = []
        save(args.out, results)

        for c in args.concurrency:
            make_client, call = remote("http")
            with MemorySampler(server) as memory:
                served = run_load(call, args.requests, c, make_client)
            local = run_load(in_process, args.requests, c)
            results["load"].append(
                {
                    "concurrency": c,
                    "server": {
                        **served,
                        "rss_start_mb": memory.samples[0],
                        "rss_end_mb": memory.samples[-1],
                        "rss_max_mb": max(memory.samples),
                    },
                    "in_process": local,
                }
            )
            save(args.out, results)
    save(args.out, results)
    print(report(results))
    return 0


def save(out: Path, results: dict) -> None:
    """Writes what is measured so far (after every phase: an SD 2.1-size run takes long)."""
    write_text(out / "serve_load.json", json.dumps(results, indent=1), overwrite=True)
    write_text(out / "serve_load.md", report(results), overwrite=True)


def report(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# Serving under load: {m['resolution']} px, backend {m['backend']}, {m['instances']} model instances",
        "",
        f"`{results['command']}`",
        "",
        f"{m['cpu']}, {m['cores']} cores; support bank {m['bank_mb']:.1f} MB (1 shot).",
        "",
        "## Concurrency 1, side by side (interleaved rounds)",
        "",
        "| row | n | p50 ms | p95 ms | p99 ms | max ms | p50 over in-process |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["concurrency_1_side_by_side"].items():
        extra = (
            f"+{row['overhead_p50_ms']:.1f} ms ({(row['ratio_p50'] - 1) * 100:+.1f} %)" if "ratio_p50" in row else "-"
        )
        lines.append(
            f"| {name} | {row['n']} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} "
            f"| {row['max_ms']:.1f} | {extra} |"
        )
    lines += [
        "",
        f"Masks that differed from the in-process runtime's: {results['concurrency_1_wrong_masks']}.",
        "",
        "## Load (HTTP), against the in-process runtime with as many threads",
        "",
        "| concurrency | server q/s | p50 ms | p95 ms | p99 ms | max ms | errors | wrong masks "
        "| server RSS start / end / max MB | in-process q/s | in-process p50 / p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["load"]:
        s, local = row["server"], row["in_process"]
        lines.append(
            f"| {row['concurrency']} | {s['throughput_qps']:.2f} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} "
            f"| {s['p99_ms']:.1f} | {s['max_ms']:.1f} | {s['errors']} | {s['wrong_masks']} "
            f"| {s['rss_start_mb']:.0f} / {s['rss_end_mb']:.0f} / {s['rss_max_mb']:.0f} "
            f"| {local['throughput_qps']:.2f} | {local['p50_ms']:.1f} / {local['p99_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
