"""`manifest.json` of an engine directory: everything a host needs to run the graphs, and nothing torch.

{
  "schema_version": 1, "kind": "diffews",
  "model": {"source": ..., "hash": sha256 of the source model folder},
  "resolution": 128, "readout": {"mode": "relative", "threshold": 0.25},
  "max_shots": 5, "precision": "fp32",
  "layers": [{"name": "down_blocks.0.attentions.0...attn1", "tokens": 256, "channels": 32}, ...],
  "graphs": {"support_encoder": {"file": "support_encoder.onnx", "sha256": ..., "spec": {inputs, outputs, ...}},
             "query_segmenter": {...}},
  "parity": [worst row per graph output], "producer": {package versions},
  "tensorrt_plans": {"support_encoder": [{"file": "support_encoder.trt10.3.0.sm87.plan", "sha256": ...,
                     "tensorrt": "10.3.0", "compute_capability": "8.7", "precision": "fp16", ...}], ...}
}

A SLiMe directory ("kind": "slime") has one `part_segmenter` graph, no read-out, shots or layers,
and a `parts` entry instead: {"class_names": [...], "patching": {"output_size", "per_side",
"patch_size"}, "settings": {the test-time settings baked into the graph}}.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.contract import FusedLayer, GraphSpec

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
READOUT_MODES = ("relative", "absolute")
KINDS = ("diffews", "slime")


class EngineDirError(ValueError):
    """An engine directory is missing, incomplete, modified or from an unknown toolkit version."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class GraphEntry:
    """One graph file of the directory, its external weight files (graphs over 2 GB) and its contract."""

    file: str
    sha256: str
    spec: GraphSpec
    external_data: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "external_data": self.external_data,
            "spec": self.spec.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> GraphEntry:
        return cls(data["file"], data["sha256"], GraphSpec.from_json(data["spec"]), data.get("external_data", {}))

    @property
    def files(self) -> dict[str, str]:
        """Every file of this graph -> its sha256."""
        return {self.file: self.sha256, **self.external_data}


@dataclass
class Manifest:
    """The parsed manifest; `graphs` maps a graph name to its entry."""

    kind: str
    model: dict
    resolution: int
    precision: str
    graphs: dict[str, GraphEntry]
    readout: dict = field(default_factory=dict)  # DiffewS
    max_shots: int = 0  # DiffewS
    layers: list[FusedLayer] = field(default_factory=list)  # DiffewS
    parts: dict = field(default_factory=dict)  # SLiMe
    parity: list[dict] = field(default_factory=list)
    producer: dict = field(default_factory=dict)
    # graph -> TensorRT plans built for it (file, sha256, tensorrt, compute_capability, precision, refittable)
    tensorrt_plans: dict[str, list[dict]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "model": self.model,
            "resolution": self.resolution,
            "readout": self.readout,
            "max_shots": self.max_shots,
            "precision": self.precision,
            "layers": [asdict(layer) for layer in self.layers],
            "parts": self.parts,
            "graphs": {name: entry.to_json() for name, entry in self.graphs.items()},
            "parity": self.parity,
            "producer": self.producer,
            "tensorrt_plans": self.tensorrt_plans,
        }

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike, verify: bool = True) -> Manifest:
        """Parses `directory/manifest.json`; with `verify`, checks every graph file's sha256."""
        directory = Path(directory)
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise EngineDirError(
                f"{directory} is not an engine directory (no {MANIFEST_FILE}); build one with "
                "`python -m export.build_engine --out DIR`"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise EngineDirError(f"{path} is not valid JSON ({err}); rebuild the engines") from err
        version = data.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise EngineDirError(
                f"{path} has schema version {version!r}; this runtime reads up to {SCHEMA_VERSION}: upgrade the toolkit"
            )
        try:
            kind = data["kind"]
            if kind not in KINDS:
                raise EngineDirError(f"{path}: kind {kind!r} is not one of {KINDS}; upgrade the toolkit")
            diffews = kind == "diffews"  # its fields are required there, absent elsewhere
            manifest = cls(
                kind=kind,
                model=data["model"],
                resolution=int(data["resolution"]),
                readout=data["readout"] if diffews else {},
                max_shots=int(data["max_shots"]) if diffews else 0,
                precision=data["precision"],
                layers=[FusedLayer(**layer) for layer in data["layers"]] if diffews else [],
                parts=data["parts"] if kind == "slime" else {},
                graphs={name: GraphEntry.from_json(g) for name, g in data["graphs"].items()},
                parity=data.get("parity", []),
                producer=data.get("producer", {}),
                tensorrt_plans=data.get("tensorrt_plans", {}),
                schema_version=version,
            )
        except (KeyError, TypeError) as err:
            raise EngineDirError(f"{path} lacks or misformats {err}; rebuild the engines") from err
        if kind == "diffews" and manifest.readout.get("mode") not in READOUT_MODES:
            raise EngineDirError(f"{path}: read-out mode must be one of {READOUT_MODES}, got {manifest.readout}")
        for name, entry in manifest.graphs.items():
            for file_name, sha256 in entry.files.items():
                file = directory / file_name
                if not file.is_file():
                    raise EngineDirError(
                        f"{directory}: graph {name!r} file {file_name} is missing; rebuild the engines"
                    )
                if verify and file_sha256(file) != sha256:
                    raise EngineDirError(
                        f"{file} does not match its sha256 in {MANIFEST_FILE}: it was modified or truncated after "
                        "the build; rebuild the engines"
                    )
        return manifest

    def graph(self, name: str) -> GraphEntry:
        if name not in self.graphs:
            raise EngineDirError(
                f"this engine directory ({self.kind}) has no {name!r} graph; it has {list(self.graphs)}"
            )
        return self.graphs[name]
