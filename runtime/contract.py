"""The I/O contract of an exported graph: one descriptor read by export, engine building, the runtime and benchmarks.

Torch-free on purpose: the runtime validates every feed against it, the exporter derives
dynamic axes, sample inputs and parity tolerances from it, a TensorRT build its optimisation
profile (min / opt / max shapes), and `manifest.json` stores it so that a C++ host needs
nothing else.
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


# --------------------------------------------------------------------------- DiffewS
SUPPORT_ENCODER = "support_encoder"
QUERY_SEGMENTER = "query_segmenter"
# Parity tolerances per precision: (bank tensors, query mask). fp32 graphs must match PyTorch to
# float rounding; fp16 ones to half-precision rounding accumulated over the UNet.
PRECISIONS = {
    "fp32": (Tolerance(max_rel_l2=1e-3), Tolerance(min_iou=0.99)),
    "fp16": (Tolerance(max_rel_l2=2e-2), Tolerance(min_iou=0.95)),
}


@dataclass(frozen=True)
class FusedLayer:
    """A self-attention layer whose K/V form the bank: N tokens (h x w) of C channels."""

    name: str
    tokens: int
    channels: int


def bank_names(layers: list[FusedLayer]) -> list[str]:
    """The bank tensors' graph names, keys of every layer then values: key_00 ... key_15, value_00 ..."""
    return [f"key_{i:02d}" for i in range(len(layers))] + [f"value_{i:02d}" for i in range(len(layers))]


def diffews_graph_specs(
    layers: list[FusedLayer],
    max_shots: int,
    min_side: int = 32,
    opt_side: int = 512,
    max_side: int = 4096,
    precision: str = "fp32",
) -> dict[str, GraphSpec]:
    """The `support_encoder` and `query_segmenter` descriptors of a DiffewS model.

    Args:
        layers: the fused layers in execution order.
        max_shots: the largest S the query graph is built for.
        min_side, opt_side, max_side: the range of image height and width (pixels) the graphs are built for.
        precision: "fp32" or "fp16" (looser parity tolerances; the I/O types stay as listed).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    bank_tolerance, mask_tolerance = PRECISIONS[precision]

    def pixels(name: str, channels: tuple[int, ...], doc: str, axes=("height", "width")) -> TensorSpec:
        return pixel_spec(name, doc, min_side, opt_side, max_side, trailing=channels, axes=axes)

    names = bank_names(layers)
    per_layer = layers + layers
    shot_bank = tuple(
        TensorSpec(n, "float32", (1, ly.tokens, ly.channels), *(((1, ly.tokens, ly.channels),) * 3), f"{ly.name}")
        for n, ly in zip(names, per_layer)
    )
    query_bank = tuple(
        TensorSpec(
            n,
            "float32",
            ("shots", ly.tokens, ly.channels),
            (1, ly.tokens, ly.channels),
            (1, ly.tokens, ly.channels),
            (max_shots, ly.tokens, ly.channels),
            f"{ly.name}: the shots' single-shot banks concatenated on axis 0",
        )
        for n, ly in zip(names, per_layer)
    )
    # Axes of its own: the graph resizes the mask by the mask's shape, whatever the image's is (the
    # runtime and the manifest's rules still require both to be one size).
    mask_in = pixels(
        "mask", (), "support mask, foreground > 0, same size as the image", axes=("mask_height", "mask_width")
    )
    threshold = TensorSpec(
        "threshold", "float32", (), (), (), (), "read-out threshold (relative or absolute, see manifest)"
    )
    mask_out = pixels("mask", (), "query mask in {0, 1} at the query's size")
    return {
        SUPPORT_ENCODER: GraphSpec(
            SUPPORT_ENCODER,
            (pixels("image", (3,), "support image, RGB, any size"), mask_in),
            shot_bank,
            bank_tolerance,
            "one support shot -> its K/V bank",
        ),
        QUERY_SEGMENTER: GraphSpec(
            QUERY_SEGMENTER,
            (pixels("image", (3,), "query image, RGB, any size"), threshold, *query_bank),
            (mask_out,),
            mask_tolerance,
            "query image + S-shot bank -> query mask",
        ),
    }


# The read-out threshold's range in both modes: it is compared with the decoded mask image scaled
# to [0, 1] (relative: times its maximum), so 0 marks every non-black pixel and 1 marks nothing.
THRESHOLD_RANGE = (0.0, 1.0)


def diffews_rules(specs: dict[str, GraphSpec], max_shots: int) -> dict:
    """The input rules a host must enforce, as written into `manifest.json` (`rules`; schema in the manifest module).

    The graphs themselves check nothing: a feed that breaks a rule gives a wrong answer, not an error.
    """
    image = specs[SUPPORT_ENCODER].inputs[0]
    return {
        "sides": {"min": image.min_shape[0], "max": image.max_shape[0]},
        "support_mask": {"same_size_as": "image", "foreground": "value > 0", "min_foreground_pixels": 1},
        "shots": {"min": 1, "max": max_shots},
        "threshold": {"min": THRESHOLD_RANGE[0], "max": THRESHOLD_RANGE[1], "max_exclusive": True},
        "bank": {
            "from": SUPPORT_ENCODER,
            "to": QUERY_SEGMENTER,
            "feeds": {name: name for name in specs[SUPPORT_ENCODER].output_names},
            "shot_axis": 0,
            "same_shots_in_every_tensor": True,
            "finite": True,
        },
    }


def check_threshold(value, rules: dict) -> float:
    """A read-out threshold as a float, or ValueError naming the range (`rules`: the manifest's `rules.threshold`)."""
    low, high = rules["min"], rules["max"]
    closing = ")" if rules.get("max_exclusive", True) else "]"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"threshold must be a number in [{low}, {high}{closing}, got {value!r}")
    value = float(value)
    inside = low <= value < high if rules.get("max_exclusive", True) else low <= value <= high
    if not inside:  # NaN fails both comparisons
        raise ValueError(
            f"threshold must be in [{low}, {high}{closing} (a fraction of the decoded mask's maximum or an "
            f"absolute level, as the manifest's readout.mode says), got {value}"
        )
    return value


# --------------------------------------------------------------------------- SLiMe
PART_SEGMENTER = "part_segmenter"
PART_PRECISIONS = {"fp32": Tolerance(max_rel_l2=1e-3), "fp16": Tolerance(max_rel_l2=5e-2)}


def slime_graph_spec(
    num_classes: int, min_side: int = 32, opt_side: int = 512, max_side: int = 4096, precision: str = "fp32"
) -> GraphSpec:
    """The `part_segmenter` descriptor: an RGB crop (h, w, 3) uint8 -> K score maps (K, h, w) float32."""
    if precision not in PART_PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PART_PRECISIONS)}, got {precision!r}")
    sides = (min_side, opt_side, max_side)
    return GraphSpec(
        PART_SEGMENTER,
        (pixel_spec("image", "an RGB crop, any size (resized to the model resolution inside)", *sides, trailing=(3,)),),
        (pixel_spec("scores", "per-class scores at the crop's size; argmax = label", *sides, leading=(num_classes,),
                    dtype="float32"),),
        PART_PRECISIONS[precision],
        "one crop -> its K part score maps (SLiMe)",
    )  # fmt: skip
