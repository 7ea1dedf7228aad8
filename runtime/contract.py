"""The I/O contract of an exported graph, whatever the method: one descriptor read by export, engine building,
the runtime and benchmarks.

Torch-free on purpose: the runtime validates every feed against it, the exporter derives
dynamic axes, sample inputs and parity tolerances from it, a TensorRT build its optimisation
profile (min / opt / max shapes, `GraphSpec.profile`), and `manifest.json` stores it so that a
C++ host needs nothing else. Each method's descriptors are made next to the export wrapper whose
`forward()` they describe (`export.diffews_graphs`, `export.slime_graph`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: the ONNX name.
        dtype: numpy dtype name ("uint8", "float32").
        shape: per axis an int (fixed) or a name (dynamic axis, e.g. "height", "shots").
        min_shape, opt_shape, max_shape: concrete shapes bounding the dynamic axes (TensorRT
            profiles, sample inputs, benchmarks); equal to `shape` where it is fixed.
        doc: what the tensor holds, for the manifest's reader.
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    doc: str = ""

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def check(self, array: np.ndarray, graph: str) -> None:
        """Raises ValueError naming the problem when `array` cannot be fed as this tensor."""
        if array.dtype != np.dtype(self.dtype):
            raise ValueError(f"{graph}: input {self.name!r} must be {self.dtype}, got {array.dtype}")
        if array.ndim != len(self.shape):
            raise ValueError(
                f"{graph}: input {self.name!r} must have shape {self.shape_text()}, got {tuple(array.shape)}"
            )
        for axis, (size, want, lo, hi) in enumerate(zip(array.shape, self.shape, self.min_shape, self.max_shape)):
            if isinstance(want, int) and size != want:
                raise ValueError(
                    f"{graph}: input {self.name!r} axis {axis} must be {want}, got shape {tuple(array.shape)} "
                    f"(expected {self.shape_text()}); was it made by another model?"
                )
            if isinstance(want, str) and not lo <= size <= hi:
                raise ValueError(
                    f"{graph}: input {self.name!r} axis {axis} ({want}) is {size}, outside the built range "
                    f"{lo}..{hi}; rebuild the engines with a larger range"
                )

    def shape_text(self) -> str:
        return "(" + ", ".join(str(d) for d in self.shape) + ")"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TensorSpec:
        def sizes(values) -> tuple:  # JSON's 1.0 is an integer to the schema: make it one here too
            return tuple(v if isinstance(v, str) else int(v) for v in values)

        return cls(
            name=data["name"],
            dtype=data["dtype"],
            shape=sizes(data["shape"]),
            min_shape=sizes(data["min_shape"]),
            opt_shape=sizes(data["opt_shape"]),
            max_shape=sizes(data["max_shape"]),
            doc=data.get("doc", ""),
        )


@dataclass(frozen=True)
class Tolerance:
    """Parity limits between the exported graph and PyTorch on the sample inputs.

    Float outputs: relative L2 error ||a - b|| / ||b|| <= max_rel_l2 (robust to the single-element
    outliers that differently ordered float sums give deep in a network). Mask outputs (uint8):
    IoU >= min_iou.
    """

    max_rel_l2: float = 1e-3
    min_iou: float = 0.99


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its name, inputs, outputs and parity tolerance."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tolerance: Tolerance = field(default_factory=Tolerance)
    doc: str = ""

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) shape of every input with a dynamic axis: the graph's optimisation profile."""
        return {t.name: (t.min_shape, t.opt_shape, t.max_shape) for t in self.inputs if t.dynamic_axes}

    def profile_text(self, which: int, separator: str = ",") -> str:
        """One end of the profile as `image:32x32x3,mask:32x32` (which: 0 min, 1 opt, 2 max).

        The form ONNX Runtime's TensorRT provider and trtexec take.
        """
        return separator.join(f"{n}:{'x'.join(map(str, s[which]))}" for n, s in self.profile().items())

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """Raises ValueError when `feed` misses, adds or misshapes an input of this graph."""
        missing = [n for n in self.input_names if n not in feed]
        extra = [n for n in feed if n not in self.input_names]
        if missing or extra:
            raise ValueError(f"{self.name}: feed is missing {missing} and has unknown inputs {extra}")
        for spec in self.inputs:
            spec.check(np.asarray(feed[spec.name]), self.name)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "doc": self.doc,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "tolerance": asdict(self.tolerance),
        }

    @classmethod
    def from_json(cls, data: dict) -> GraphSpec:
        return cls(
            name=data["name"],
            inputs=tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in data["outputs"]),
            tolerance=Tolerance(**data.get("tolerance", {})),
            doc=data.get("doc", ""),
        )


def pixel_spec(
    name: str,
    doc: str,
    min_side: int,
    opt_side: int,
    max_side: int,
    leading: tuple[int, ...] = (),
    trailing: tuple[int, ...] = (),
    dtype: str = "uint8",
    axes: tuple[str, str] = ("height", "width"),
) -> TensorSpec:
    """An image-sized tensor (*leading, height, width, *trailing), sides within min_side..max_side.

    Args:
        axes: the names of the two dynamic axes. The exporter makes one symbol per name, so two
            inputs sharing names are assumed to have the same size inside the graph; an input
            that must be resized by its own shape needs names of its own.
    """
    return TensorSpec(
        name,
        dtype,
        (*leading, *axes, *trailing),
        (*leading, min_side, min_side, *trailing),
        (*leading, opt_side, opt_side, *trailing),
        (*leading, max_side, max_side, *trailing),
        doc,
    )
