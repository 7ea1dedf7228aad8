"""`manifest.json` of an engine directory: everything a host needs to run the graphs, and nothing torch.

{
  "schema_version": 2, "kind": "diffews",
  "model": {"source": ..., "hash": sha256 of the source model folder},
  "resolution": 128, "readout": {"mode": "relative", "threshold": 0.25},
  "max_shots": 5, "precision": "fp32",
  "layers": [{"name": "down_blocks.0.attentions.0...attn1", "tokens": 256, "channels": 32}, ...],
  "graphs": {"support_encoder": {"file": "support_encoder.onnx", "sha256": ..., "spec": {inputs, outputs, ...}},
             "query_segmenter": {...}},
  "parity": [worst row per graph output], "producer": {package versions},
  "tensorrt_plans": {"support_encoder": [{"file": "support_encoder.trt10.3.0.sm87.plan", "sha256": ...,
                     "tensorrt": "10.3.0", "compute_capability": "8.7", "precision": "fp16", ...}], ...},
  "rules": {"sides": {"min": 32, "max": 4096}, "support_mask": {...}, "shots": {"min": 1, "max": 5},
            "threshold": {"min": 0.0, "max": 1.0, "max_exclusive": true}, "bank": {"from", "to", "feeds", ...}}
}

`rules` are the input rules a host enforces (written by `export.diffews_graphs.diffews_rules`); the
graphs check nothing. A graph entry's `reduced_precision` (false for the DiffewS support encoder)
says whether a backend computing in reduced precision (`openvino-bf16`) may run that graph so.
`manifest.schema.json` beside this module is the JSON Schema of the whole file: the runtime
validates every manifest against it on load, and hosts in other languages can too.

A SLiMe directory ("kind": "slime") has one `part_segmenter` graph, no read-out, shots or layers,
and a `parts` entry instead: {"class_names": [...], "patching": {"output_size", "per_side",
"patch_size"}, "settings": {the test-time settings baked into the graph}}. In Python the two
methods' fields are typed sections (`runtime.sections`): `manifest.diffews`, `manifest.parts`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from runtime.contract import GraphSpec
from runtime.files import write_text
from runtime.sections import SUPPORT_ENCODER, DiffewsSection, PartsSection

# 2: `rules`, and a support encoder that resizes the mask by the mask's own shape (1 took its width from the image).
SCHEMA_VERSION = 2
MANIFEST_FILE = "manifest.json"
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")


class EngineDirError(ValueError):
    """An engine directory is missing, incomplete, modified or from an unknown toolkit version."""


@functools.cache
def _validator():
    import jsonschema  # a runtime dependency; imported here so that `import runtime` stays cheap

    schema = json.loads(SCHEMA_FILE.read_text())
    return jsonschema.Draft202012Validator(schema)


def schema_problem(data) -> str | None:
    """The first way `data` breaks `manifest.schema.json` ("$.readout.threshold: ... is a required property"), or None."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is None:
        return None
    return f"{error.json_path}: {error.message}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class GraphEntry:
    """One graph file of the directory, its external weight files (graphs over 2 GB) and its contract.

    Attributes:
        reduced_precision: may a backend that computes in reduced precision (`openvino-bf16`) run
            this graph so? False keeps it fp32 there (the DiffewS support encoder: it runs once per
            support set, and bf16 there costs mask agreement for no per-query time).
    """

    file: str
    sha256: str
    spec: GraphSpec
    external_data: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    reduced_precision: bool = True

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "external_data": self.external_data,
            "reduced_precision": self.reduced_precision,
            "spec": self.spec.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict, default_reduced_precision: bool = True) -> GraphEntry:
        """`default_reduced_precision`: for manifests written before the field existed."""
        return cls(
            data["file"],
            data["sha256"],
            GraphSpec.from_json(data["spec"]),
            data.get("external_data", {}),
            bool(data.get("reduced_precision", default_reduced_precision)),
        )

    @property
    def files(self) -> dict[str, str]:
        """Every file of this graph -> its sha256."""
        return {self.file: self.sha256, **self.external_data}


@dataclass
class Manifest:
    """The parsed manifest; `graphs` maps a graph name to its entry.

    Attributes:
        diffews: the DiffewS section (kind "diffews"), else None.
        parts: the SLiMe section (kind "slime"), else None.
    """

    kind: str
    model: dict
    resolution: int
    precision: str
    graphs: dict[str, GraphEntry]
    diffews: DiffewsSection | None = None
    parts: PartsSection | None = None
    parity: list[dict] = field(default_factory=list)
    producer: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)  # the input rules a host enforces (the schema's `rules`)
    # graph -> TensorRT plans built for it (file, sha256, tensorrt, compute_capability, precision, refittable)
    tensorrt_plans: dict[str, list[dict]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        # Both kinds write every top-level field (the other kind's empty), as schema version 2 always has.
        diffews = self.diffews.to_json() if self.diffews else {"readout": {}, "max_shots": 0, "layers": []}
        return {
            "schema_version": self.schema_version,
            "kind": self.kind,
            "model": self.model,
            "resolution": self.resolution,
            **diffews,
            "precision": self.precision,
            "parts": self.parts.to_json() if self.parts else {},
            "graphs": {name: entry.to_json() for name, entry in self.graphs.items()},
            "parity": self.parity,
            "producer": self.producer,
            "tensorrt_plans": self.tensorrt_plans,
            "rules": self.rules,
        }

    def write(self, directory: Path) -> Path:
        """Writes `directory/manifest.json` (through a temporary file), refusing one that breaks the schema."""
        text = json.dumps(self.to_json(), indent=1)
        problem = schema_problem(json.loads(text))  # as a reader will see it (tuples become lists)
        if problem:
            raise EngineDirError(f"refusing to write a manifest that breaks {SCHEMA_FILE.name}: {problem}")
        return write_text(Path(directory) / MANIFEST_FILE, text)

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
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EngineDirError(f"{path} is not valid JSON ({err}); rebuild the engines") from err
        except OSError as err:
            raise EngineDirError(f"{path} cannot be read ({err.strerror}); check its permissions") from err
        version = data.get("schema_version") if isinstance(data, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version != SCHEMA_VERSION:
            fix = "upgrade the toolkit" if version > SCHEMA_VERSION else "rebuild it with python -m export.build_engine"
            raise EngineDirError(
                f"{path} has schema version {version}; this runtime reads version {SCHEMA_VERSION}: {fix}"
            )
        problem = schema_problem(data)
        if problem:
            raise EngineDirError(
                f"{path} is not a valid engine manifest ({problem}; schema: {SCHEMA_FILE.name}); rebuild the engines"
            )
        try:
            kind = data["kind"]
            diffews = kind == "diffews"  # its fields are required there, absent elsewhere
            manifest = cls(
                kind=kind,
                model=data["model"],
                resolution=int(data["resolution"]),
                diffews=DiffewsSection.from_json(data) if diffews else None,
                precision=data["precision"],
                parts=PartsSection.from_json(data["parts"]) if kind == "slime" else None,
                graphs={
                    # before `reduced_precision` existed, runtimes kept the support encoder in fp32
                    name: GraphEntry.from_json(g, default_reduced_precision=not (diffews and name == SUPPORT_ENCODER))
                    for name, g in data["graphs"].items()
                },
                parity=data.get("parity", []),
                producer=data.get("producer", {}),
                tensorrt_plans=data.get("tensorrt_plans", {}),
                rules=data["rules"],
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as err:  # what the schema cannot express
            raise EngineDirError(f"{path} lacks or misformats {err}; rebuild the engines") from err
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
