"""Writing an engine directory, whatever the method: staged under a temporary name, parity-checked, then renamed.

    log = BuildLog()
    with engine_directory(out, overwrite) as work:       # WORK = OUT's `.partial` sibling
        path = export_graph_file(module, spec, sample, work, log)   # + fp16, fusion, TensorRT parser check
        write_parity(work, rows)                        # parity.md; raises ParityError on a miss
        Manifest(..., graphs={spec.name: graph_entry(path, spec)}, producer=producer_versions()).write(work)

A failed build never leaves a half-written directory under OUT nor removes the old one; a
replaced directory is removed only once the new one is in place (`runtime.files.replacing_folder`).
The failed build's files stay in `.OUT.partial` for inspection. Every step is logged with the
time since the build started.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

from export.onnx_export import export_onnx, operator_counts
from export.optimize import convert_fp16, fuse_operators
from export.parity import ParityRow, check_parity, parity_table
from export.tensorrt_check import tensorrt_problems
from runtime.contract import GraphSpec
from runtime.files import OutputError, check_writable, replacing_folder, write_text
from runtime.manifest import MANIFEST_FILE, GraphEntry, file_sha256

PARITY_FILE = "parity.md"
PRODUCER_PACKAGES = ("diffseg-deploy", "torch", "diffusers", "onnx", "onnxscript", "onnxruntime")


class BuildLog:
    """Prints each build step with the seconds since the build started: `[   12.3 s] exported ...`."""

    def __init__(self):
        self.start = time.time()

    def __call__(self, message: str) -> None:
        print(f"[{time.time() - self.start:7.1f} s] {message}", flush=True)


def check_common_arguments(
    min_side: int, max_side: int, samples: int, max_samples: int, optimize: bool, tensorrt: bool
):
    """Raises ValueError for build arguments every method shares that are out of range or contradict each other."""
    if not 8 <= min_side <= max_side:
        raise ValueError(f"need 8 <= min_side <= max_side, got {min_side} and {max_side}")
    if not 1 <= samples <= max_samples:
        raise ValueError(f"the parity check runs on 1 to {max_samples} samples, got {samples}")
    if tensorrt and optimize:
        raise ValueError("optimizing writes ONNX Runtime-only operators that TensorRT cannot parse; drop one of them")


def check_engine_output(out: Path, overwrite: bool) -> None:
    """Raises `runtime.files.OutputError` unless an engine directory may be written at `out`.

    An existing path needs `overwrite`, and only an engine directory (a folder with a manifest,
    or an empty one) is ever replaced: a folder of other files is refused even then.
    """
    check_writable(out, overwrite, folder=True)
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise OutputError(f"{out} is not empty and holds no {MANIFEST_FILE}; only engine directories are replaced")


@contextmanager
def engine_directory(out: Path, overwrite: bool) -> Iterator[Path]:
    """Checks `out` (`check_engine_output`), then yields a fresh folder that replaces `out` when the block succeeds."""
    check_engine_output(out, overwrite)
    with replacing_folder(out, overwrite=True, keep_failed=True) as work:
        yield work


def graph_entry(path: Path, spec: GraphSpec, reduced_precision: bool = True) -> GraphEntry:
    """The manifest entry of an exported graph, with its external weight file when it has one."""
    data = path.with_name(path.name + ".data")
    external = {data.name: file_sha256(data)} if data.exists() else {}
    return GraphEntry(path.name, file_sha256(path), spec, external, reduced_precision)


def producer_versions() -> dict[str, str]:
    """Versions of the packages that made the graphs (the manifest's `producer`)."""
    versions = {}
    for package in PRODUCER_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_parity(work: Path, rows: list[ParityRow]) -> None:
    """Prints the parity table, writes it to WORK/parity.md, then raises `ParityError` if a row missed its tolerance."""
    table = parity_table(rows)
    print(table)
    write_text(work / PARITY_FILE, table + "\n")
    check_parity(rows)


class TensorRTParseError(RuntimeError):
    """A graph TensorRT's ONNX parser cannot read, where TensorRT plans were asked for."""


def export_graph_file(
    module: torch.nn.Module,
    spec: GraphSpec,
    sample: dict[str, torch.Tensor],
    folder: Path,
    log,
    precision: str = "fp32",
    optimize: bool = False,
    tensorrt: bool = False,
    packed_tail: int = 0,
) -> Path:
    """Exports `module` to FOLDER/NAME.onnx, then fuses (`optimize`), converts (`precision` fp16) and
    checks it against TensorRT's parser (`TensorRTParseError` with `tensorrt`); `log` prints each step."""
    name = spec.name
    path = folder / f"{name}.onnx"
    log(f"exporting {name} ...")
    export_onnx(module, spec, sample, path, packed_tail=packed_tail)
    counts = operator_counts(path)
    log(f"exported {name}: {sum(counts.values())} nodes, {path.stat().st_size / 2**20:.1f} MiB")
    if optimize:
        log(f"fused operators in {name}: {fuse_operators(path)}")
    if precision == "fp16":
        convert_fp16(path)
        log(f"converted {name} to fp16 (inputs and outputs keep their types)")
    problems = tensorrt_problems(path)
    log(
        f"TensorRT parser check of {name}: "
        + (f"{len(problems)} problem(s), the first: {problems[0]}" if problems else "ok")
    )
    if problems and tensorrt:
        raise TensorRTParseError(f"TensorRT plans were asked for, but TensorRT cannot parse {name}: {problems[0]}")
    return path
