"""`python -m runtime.serve`: Triton Inference Server (through PyTriton) over engine directories.

    python -m runtime.serve --engines engines/synth --parts-engines horse=engines/horse \
        --bank-store /srv/banks --bank-cache-mb 4096 --instances 2

Listens on --host (default 127.0.0.1; 0.0.0.0 for every interface): KServe v2 HTTP on
--http-port, gRPC on --grpc-port, Triton's Prometheus metrics on --metrics-port and the bank
cache's on --bank-metrics-port. Readiness is Triton's (`GET /v2/health/ready`). SIGTERM or
SIGINT stops it after the requests in flight. Errors before serving are one line and an exit
code (`runtime.cli`).
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from pathlib import Path

from runtime.backends import BACKENDS
from runtime.cli import EXIT_BACKEND, EXIT_SYSTEM, fail, reporting_errors

LOG = logging.getLogger("runtime.serve")
NAME = re.compile(r"[A-Za-z0-9_.-]+")


def parts_name(value: str) -> tuple[str, Path]:
    """`NAME=DIR` or `DIR` (named after its folder) -> (name, directory)."""
    name, sep, folder = value.partition("=")
    if not sep:
        name, folder = Path(value).resolve().name, value
    if not NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"{name!r} cannot name a model (letters, digits, '_', '.', '-' only); pass --parts-engines NAME=DIR"
        )
    return name, Path(folder)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", type=Path, default=None, help="a DiffewS engine directory")
    parser.add_argument(
        "--parts-engines",
        type=parts_name,
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="a SLiMe engine directory, served as segment_parts_NAME (repeat for several)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics")
    parser.add_argument("--bank-metrics-port", type=int, default=None, help="the bank cache's (default: metrics + 1)")
    parser.add_argument("--instances", type=int, default=2, help="model instances (concurrent requests) per model")
    parser.add_argument("--bank-store", type=Path, default=None, help="shared directory of support banks")
    parser.add_argument("--bank-cache-mb", type=float, default=2048.0, help="memory for support banks (MB)")
    parser.add_argument(
        "--backend",
        default=None,
        choices=("auto", *BACKENDS),
        help="for every engine directory (default: each runtime's own, as in-process: `auto` for DiffewS, "
        "`onnxruntime` for SLiMe, whose bf16 agreement is not measured yet)",
    )
    parser.add_argument("--threads", type=int, default=None, help="inference threads per call (default: the backend's)")
    parser.add_argument("--max-side", type=int, default=4096, help="longest image side segment_parts accepts")
    args = parser.parse_args(argv)
    if args.engines is None and not args.parts_engines:
        parser.error("give --engines (DiffewS) or --parts-engines (SLiMe), or both")
    names = [n for n, _ in args.parts_engines]
    if len(set(names)) != len(names):
        parser.error(f"two --parts-engines share a name ({names}); name them with NAME=DIR")
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    if args.bank_cache_mb <= 0:
        parser.error("--bank-cache-mb must be positive")
    if args.bank_metrics_port is None:
        args.bank_metrics_port = args.metrics_port + 1
    return args


def build_handlers(args: argparse.Namespace):
    """-> (FewShotHandlers or None, {name: PartsHandler}); engine errors raise as the runtime's."""
    from runtime.fewshot import FewShotSegmenter
    from runtime.parts import PartSegmenter
    from runtime.serve.bank_cache import BankCache
    from runtime.serve.bank_store import BankStore
    from runtime.serve.service import FewShotService, bank_source
    from runtime.serve.tensors import FewShotHandlers, PartsHandler

    backend = {"backend": args.backend} if args.backend else {}  # none given: each class's default
    fewshot = None
    if args.engines is not None:
        segmenter = FewShotSegmenter.from_dir(args.engines, threads=args.threads, **backend)
        source = bank_source(segmenter)
        store = BankStore(args.bank_store, segmenter.manifest.model["hash"], source) if args.bank_store else None
        cache = BankCache(int(args.bank_cache_mb * 2**20))
        fewshot = FewShotHandlers(FewShotService(segmenter, cache, store))
    parts = {
        name: PartsHandler(PartSegmenter.from_dir(folder, threads=args.threads, **backend), args.max_side)
        for name, folder in args.parts_engines
    }
    return fewshot, parts


def _stop(signum, frame):  # SIGTERM (docker stop, systemd, kubernetes) ends serve() as Ctrl+C does
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pytriton").setLevel(logging.WARNING)
    from runtime.serve.environment import prefer_interpreter_libpython

    prefer_interpreter_libpython()  # before the server process starts (runtime.serve.environment)
    try:
        from pytriton.triton import Triton, TritonConfig
    except ImportError:
        fail(
            EXIT_BACKEND,
            "the server needs PyTriton: pip install 'diffseg-deploy[serve]' (numpy < 2; see docs/serving.md)",
        )
    from runtime.serve.metrics import start_metrics_server
    from runtime.serve.startup import serve
    from runtime.serve.triton_app import bind_models

    with reporting_errors():  # engine, store and port errors: one line and an exit code
        fewshot, parts = build_handlers(args)
        if fewshot is not None:
            start_metrics_server(fewshot.service, args.host, args.bank_metrics_port)

    config = TritonConfig(
        http_address=args.host,
        http_port=args.http_port,
        grpc_address=args.host,
        grpc_port=args.grpc_port,
        metrics_address=args.host,
        metrics_port=args.metrics_port,
        exit_on_error=True,
        log_verbose=0,
    )
    signal.signal(signal.SIGTERM, _stop)

    def on_ready(names: list[str]) -> None:
        LOG.info(
            "serving %s on %s: http %d, grpc %d, metrics %d, bank metrics %d",
            ", ".join(names),
            args.host,
            args.http_port,
            args.grpc_port,
            args.metrics_port,
            args.bank_metrics_port,
        )

    try:
        serve(
            lambda: Triton(config=config),
            lambda triton: bind_models(triton, fewshot, parts, args.instances),
            on_ready,
        )
    except KeyboardInterrupt:
        LOG.info("stopped")
    except Exception as err:  # noqa: BLE001 - Triton failed to start or died (a port in use, a model that cannot load)
        LOG.debug("Triton failed", exc_info=True)
        text = str(err).strip().splitlines()
        fail(EXIT_SYSTEM, f"Triton stopped: {text[0] if text else type(err).__name__} (the log above has the details)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
