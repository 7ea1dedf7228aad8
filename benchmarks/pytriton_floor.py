"""The floor of PyTriton's request path on this machine: a model that does nothing, same tensors as `segment`.

    .venv-serve/bin/python -m benchmarks.pytriton_floor --side 128 --requests 200

Starts Triton through PyTriton with one model, `echo`, that returns a zero mask of the input
image's size (no inference), and times `--requests` calls from one tritonclient client per
protocol after a warm-up. What `python -m benchmarks.serve_load` reports as the server's overhead
beyond this floor is this toolkit's own (request decoding, the bank lookup). Runs in the serving
environment (it imports PyTriton); prints p50 / p95 / p99 per protocol.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from runtime.serve.environment import prefer_interpreter_libpython
from runtime.serve.process import free_ports


def echo(requests):
    return [{"mask": np.zeros(r["image"].shape[:2], np.uint8)} for r in requests]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=128, help="query side in pixels (the model resolution)")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    prefer_interpreter_libpython()
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    ports = free_ports(3)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=ports[0],
        grpc_address="127.0.0.1",
        grpc_port=ports[1],
        metrics_address="127.0.0.1",
        metrics_port=ports[2],
    )
    image = np.zeros((args.side, args.side, 3), np.uint8)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="echo",
            infer_func=[echo, echo],
            inputs=[Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3))],
            outputs=[Tensor(name="mask", dtype=np.uint8, shape=(-1, -1))],
            config=ModelConfig(batching=False),
        )
        triton.run()
        print(f"| protocol | p50 ms | p95 ms | p99 ms | ({args.requests} requests, {args.side} x {args.side} image) |")
        print("| --- | --- | --- | --- | --- |")
        for name, module, port in (("HTTP", http, ports[0]), ("gRPC", grpc, ports[1])):
            client = module.InferenceServerClient(f"127.0.0.1:{port}")
            tensor = module.InferInput("image", list(image.shape), "UINT8")
            tensor.set_data_from_numpy(image)
            for _ in range(10):
                client.infer("echo", [tensor])
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                client.infer("echo", [tensor])
                times.append((time.perf_counter() - start) * 1000)
            p50, p95, p99 = np.percentile(times, [50, 95, 99])
            print(f"| {name} | {p50:.2f} | {p95:.2f} | {p99:.2f} | |")
            client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
