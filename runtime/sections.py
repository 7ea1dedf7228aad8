"""The method-specific parts of `manifest.json`, typed: what a DiffewS and a SLiMe engine directory hold.

    manifest.diffews.readout.threshold      # DiffewS: read-out, shot limit, fused layers
    manifest.parts.class_names              # SLiMe: classes, default patch layout, baked-in settings

The JSON layout is the manifest schema's (`manifest.schema.json`); these classes only give its
loose objects names and types. Torch-free: the runtime, export and the hosts' tests read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from runtime.patches import Patching
from runtime.support_selection import SupportSelection, layer_grid

# DiffewS: the two graphs, cut at the support K/V bank.
SUPPORT_ENCODER = "support_encoder"
QUERY_SEGMENTER = "query_segmenter"
# Optional: the query graph with a batch axis (B queries of one size against one bank per run).
QUERY_BATCH = "query_batch_segmenter"
# SLiMe: one graph per embedding file.
PART_SEGMENTER = "part_segmenter"

# The three ways a DiffewS query graph decodes its mask latent, as the manifest, the CLI and the
# model folder's sub-folders name them: the method's full VAE decoder, the VAE decoder to half
# resolution plus a learned head, and a distilled decoder (the fastest).
READOUTS = ("vae", "mask_head", "mask_decoder")
# What encodes the query inside the query graph: the method's VAE encoder, or a small encoder
# distilled to give its latent (`modeling.query_encoders`).
QUERY_ENCODERS = ("vae", "distilled")
# The names the CLI took before one vocabulary existed (still accepted, with a note).
OLD_READOUT_NAMES = {"head": "mask_head", "fast": "mask_decoder"}

# The read-out threshold's range in both modes: it is compared with the decoded mask image scaled
# to [0, 1] (relative: times its maximum), so 0 marks every non-black pixel and 1 marks nothing.
THRESHOLD_RANGE = (0.0, 1.0)
# The same range as the manifest's `rules.threshold` (what `check_threshold` reads).
THRESHOLD_RULES = {"min": THRESHOLD_RANGE[0], "max": THRESHOLD_RANGE[1], "max_exclusive": True}


@dataclass(frozen=True)
class FusedLayer:
    """A self-attention layer whose K/V form the bank: N tokens (h x w) of C channels."""

    name: str
    tokens: int
    channels: int


def bank_names(layers: list[FusedLayer] | tuple[FusedLayer, ...]) -> list[str]:
    """The bank tensors' graph names, keys of every layer then values: key_00 ... key_15, value_00 ..."""
    return [f"key_{i:02d}" for i in range(len(layers))] + [f"value_{i:02d}" for i in range(len(layers))]


@dataclass(frozen=True)
class Readout:
    """How the query graph turns its decoded mask image into a mask.

    Attributes:
        mode: "relative" (foreground above threshold x the image's maximum, the authors') or "absolute".
        threshold: the default threshold, fed as the query graph's `threshold` input.
        decoder: one of `READOUTS`: what decodes the mask latent inside the graph.
    """

    mode: str
    threshold: float
    decoder: str = "vae"


@dataclass(frozen=True)
class DiffewsSection:
    """The DiffewS fields of a manifest: read-out, the largest support set, the fused layers.

    Attributes:
        max_shots: the largest support set the support encoder is asked to encode.
        selection: how a support set's bank is reduced before the query graph reads it
            (`runtime.support_selection`); the query graph takes at most
            `selection.bank_shots(max_shots)` shots.
        query_encoder: what encodes the query inside the query graph: "vae" (the method's own)
            or "distilled" (a small encoder trained to give the VAE's latent).
        profile: the build's trade-off (`runtime.profiles`): "exact", "default", "fast" or
            "custom" (also what engines built before profiles read as).
        attention_block: queries per block in the graphs' self-attention (0: all at once, also what
            engines built before blocks read as). Informative: the graphs' inputs and outputs and
            their meaning do not depend on it.
    """

    readout: Readout
    max_shots: int
    layers: tuple[FusedLayer, ...]
    selection: SupportSelection = SupportSelection()
    query_encoder: str = "vae"
    profile: str = "custom"
    attention_block: int = 0

    @property
    def bank_names(self) -> list[str]:
        return bank_names(self.layers)

    @property
    def bank_grids(self) -> dict[str, tuple[int, int]]:
        """Bank tensor name -> (h, w), its layer's token grid."""
        grids = [layer_grid(layer.tokens) for layer in self.layers]
        return dict(zip(self.bank_names, grids + grids))

    def to_json(self) -> dict:
        return {
            "readout": asdict(self.readout),
            "max_shots": self.max_shots,
            "layers": [asdict(layer) for layer in self.layers],
            "support_selection": self.selection.to_json(),
            "query_encoder": self.query_encoder,
            "profile": self.profile,
            "attention_query_block": self.attention_block,
        }

    @classmethod
    def from_json(cls, data: dict) -> DiffewsSection:
        readout = data["readout"]
        return cls(
            Readout(readout["mode"], float(readout["threshold"]), readout.get("decoder", "vae")),
            int(data["max_shots"]),
            tuple(FusedLayer(**layer) for layer in data["layers"]),
            SupportSelection.from_json(data.get("support_selection")),  # absent: every token (built before it)
            data.get("query_encoder", "vae"),  # absent: built before there was a choice
            data.get("profile", "custom"),
            int(data.get("attention_query_block", 0)),
        )


@dataclass(frozen=True)
class PartsSection:
    """The SLiMe fields of a manifest: class names, the default patch layout, the settings baked into the graph."""

    class_names: tuple[str, ...]
    patching: Patching
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        layout = self.patching
        return {
            "class_names": list(self.class_names),
            "patching": {"output_size": layout.output_size, "per_side": layout.per_side, "patch_size": layout.side},
            "settings": self.settings,
        }

    @classmethod
    def from_json(cls, data: dict) -> PartsSection:
        layout = data["patching"]
        patch = layout["patch_size"]
        patching = Patching(int(layout["output_size"]), int(layout["per_side"]), None if patch is None else int(patch))
        return cls(tuple(data["class_names"]), patching, dict(data.get("settings", {})))


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
