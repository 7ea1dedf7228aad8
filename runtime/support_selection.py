"""Support-token selection: an S-shot bank reduced to the token count the model was trained with.

DiffewS concatenates every shot's K/V tokens in each query self-attention layer, so with more
shots than it was trained with the query attends over more support tokens than it ever saw, and
costs more. The paper's appendix samples the support K/V down to the trained count (how is not in
the released code; METHOD_SPEC 1.3). Here that happens once, when the support set is set: per
fused layer, the S * N_l tokens (S shots of an h x w grid) are reduced to K * N_l, K the budget
in shots, and laid out as a (K, N_l, C_l) bank that the query graph reads as it reads K shots
(it concatenates a bank's shots along the token axis, so which shot a token sits in does not
matter). A bank of at most K shots is left as it is.

    selection = SupportSelection("stratified", budget_shots=2)
    keep = selection.indices(masks, (16, 16))         # (K * 256,) flat indices into S * 256 tokens
    reduced = selection.reduce(bank, masks, grids)    # grids: name -> (h, w); -> name -> (K, N_l, C_l)

Rules (`RULES`), each a deterministic function of the shots' masks and the rule's settings, so
that the PyTorch model, the Python runtime, the C++ host and the server keep the same tokens:

- "all": the released code's behaviour, every token of every shot (no reduction).
- "uniform": the paper's random sampling, made portable: tokens ranked by SplitMix64 of
  (seed, shot, token) and the first K * N_l kept.
- "stratified": every shot keeps about K / S of its tokens, spread over its whole grid: tokens
  ranked by the bit-reversed position of their cell on a Z-order (Morton) curve, so the first n
  of any shot cover all of its regions.
- "foreground": as stratified, but up to `foreground_share` of the kept tokens are foreground
  cells (at least half of the cell's mask pixels are foreground; the support masks are known),
  the rest background; a side with too few cells leaves its share to the other.

The kept tokens are laid out in ascending (shot, token) order, so every implementation builds the
same bank bit for bit. A cell of an h x w grid over an H x W mask holds the pixels (y, x) with
y * h // H and x * w // W equal to its row and column (integer arithmetic, no resampling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RULES = ("all", "uniform", "stratified", "foreground")
# The rule new engines get (`python -m benchmarks.support_selection` measured them; docs/diffews.md).
DEFAULT_RULE = "stratified"
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class SupportSelection:
    """How a support set's bank is reduced (the manifest's `support_selection`).

    Attributes:
        rule: one of RULES.
        budget_shots: K, the shots' worth of tokens kept per layer (the model's trained shot count).
        seed: the "uniform" rule's seed.
        foreground_share: the "foreground" rule's share of foreground tokens.
    """

    rule: str = "all"
    budget_shots: int = 1
    seed: int = 0
    foreground_share: float = 0.5

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"support selection rule must be one of {RULES}, got {self.rule!r}")
        if isinstance(self.budget_shots, bool) or not isinstance(self.budget_shots, int) or self.budget_shots < 1:
            raise ValueError(f"the selection budget must be a positive number of shots, got {self.budget_shots!r}")
        if not 0.0 <= self.foreground_share <= 1.0:
            raise ValueError(f"foreground_share must lie in [0, 1], got {self.foreground_share}")
        if not 0 <= self.seed < 2**32:  # the uniform rule shifts it by 32 bits: larger seeds would repeat smaller ones
            raise ValueError(f"the selection seed must lie in [0, 2**32), got {self.seed}")

    def reduces(self, shots: int) -> bool:
        """Does a bank of `shots` shots get reduced?"""
        return self.rule != "all" and shots > self.budget_shots

    def bank_shots(self, shots: int) -> int:
        """The shots of the bank the query graph reads for a support set of `shots`."""
        return self.budget_shots if self.reduces(shots) else shots

    def describe(self) -> str:
        """One line naming the rule and its settings, as a saved bank records how it was reduced."""
        if self.rule == "all":
            return "all"
        extra = {"uniform": f", seed {self.seed}", "foreground": f", foreground share {self.foreground_share}"}
        return f"{self.rule}, budget {self.budget_shots} shots" + extra.get(self.rule, "")

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "budget_shots": self.budget_shots,
            "seed": self.seed,
            "foreground_share": self.foreground_share,
        }

    @classmethod
    def from_json(cls, data: dict | None) -> SupportSelection:
        """The manifest's section; absent (engines built before it existed): "all", the released behaviour."""
        if not data:
            return cls()
        return cls(
            str(data["rule"]),
            int(data["budget_shots"]),
            int(data.get("seed", 0)),
            float(data.get("foreground_share", 0.5)),
        )

    # ------------------------------------------------------------------ which tokens
    def indices(self, masks: Sequence[np.ndarray], grid: tuple[int, int]) -> np.ndarray:
        """The kept tokens of one layer: flat indices s * N + t into the S shots' N = h * w tokens, ascending.

        Args:
            masks: the S support masks, (H_s, W_s), foreground non-zero.
            grid: (h, w), the layer's token grid.
        Returns:
            (K * N,) int64 when the bank is reduced, else (S * N,) (every token).
        """
        h, w = grid
        shots, tokens = len(masks), h * w
        if not self.reduces(shots):
            return np.arange(shots * tokens, dtype=np.int64)
        budget = self.budget_shots * tokens
        if self.rule == "uniform":
            keys = splitmix64(_uniform_inputs(self.seed, shots, tokens))
            order = np.lexsort((np.arange(shots * tokens), keys))
            return np.sort(order[:budget])
        spread = np.tile(spread_rank(h, w), shots)  # (S * N,) position in the stratified order
        shot_of = np.repeat(np.arange(shots), tokens)
        if self.rule == "stratified":
            order = np.lexsort((shot_of, spread))  # rank first, then shot: every shot's regions first
            return np.sort(order[:budget])
        foreground = np.concatenate([foreground_cells(m, h, w) for m in masks])
        fore, back = (np.flatnonzero(foreground == side) for side in (True, False))
        fore = fore[np.lexsort((shot_of[fore], spread[fore]))]
        back = back[np.lexsort((shot_of[back], spread[back]))]
        want = int(np.floor(self.foreground_share * budget + 0.5))
        take_fore = min(len(fore), max(want, budget - len(back)))
        return np.sort(np.concatenate([fore[:take_fore], back[: budget - take_fore]]))

    def reduce(
        self, bank: dict[str, np.ndarray], masks: Sequence[np.ndarray], grids: dict[str, tuple[int, int]]
    ) -> dict[str, np.ndarray]:
        """`bank` (name -> (S, N_l, C_l)) with each layer's kept tokens as a (K, N_l, C_l) bank.

        Args:
            grids: bank tensor name -> (h, w) of its layer.
        """
        out = {}
        for name, array in bank.items():
            shots, tokens, channels = array.shape
            if len(masks) != shots:
                raise ValueError(f"the bank holds {shots} shots but {len(masks)} masks were given")
            keep = self.indices(masks, grids[name])
            flat = array.reshape(shots * tokens, channels)[keep]
            out[name] = np.ascontiguousarray(flat.reshape(len(keep) // tokens, tokens, channels))
        return out


def layer_grid(tokens: int) -> tuple[int, int]:
    """(h, w) of a layer's token grid: square, as the model's square resolution makes every grid."""
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"a layer of {tokens} tokens is not a square grid")
    return side, side


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's output function of each uint64 (wrapping arithmetic), as the C++ host computes it."""
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniform_inputs(seed: int, shots: int, tokens: int) -> np.ndarray:
    """One uint64 per (shot, token): seed * 2**32 + shot * N + token, wrapping."""
    index = np.arange(shots * tokens, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return np.uint64((seed << 32) & _MASK64) + index


def spread_rank(h: int, w: int) -> np.ndarray:
    """(h * w,) per cell: its place in an order whose every prefix covers the grid evenly.

    Cells are numbered along a Z-order curve (Morton code of (row, column)); a cell's rank is
    the bit-reversal of its number over ceil(log2(h * w)) bits (van der Corput), ties impossible.
    """
    rows, cols = np.divmod(np.arange(h * w, dtype=np.int64), w)
    codes = np.zeros(h * w, np.int64)
    for bit in range(max(h, w).bit_length()):
        codes |= ((cols >> bit) & 1) << (2 * bit)
        codes |= ((rows >> bit) & 1) << (2 * bit + 1)
    curve = np.argsort(codes, kind="stable")  # cells in Z order
    position = np.empty(h * w, np.int64)
    position[curve] = np.arange(h * w)
    bits = max(1, (h * w - 1).bit_length())
    reversed_ = np.zeros(h * w, np.int64)
    for bit in range(bits):
        reversed_ |= ((position >> bit) & 1) << (bits - 1 - bit)
    return reversed_


def foreground_cells(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h * w,) bool: cells of which at least half the pixels are foreground (mask non-zero).

    A cell holding no pixel (a mask with fewer rows or columns than the grid) takes the pixel
    (row * H // h, column * W // w).
    """
    on = np.asarray(mask) != 0
    height, width = on.shape
    rows = (np.arange(height) * h // height)[:, None]
    cols = (np.arange(width) * w // width)[None, :]
    cell = (rows * w + cols).ravel()
    total = np.bincount(cell, minlength=h * w)
    fore = np.bincount(cell[on.ravel()], minlength=h * w)
    cell_rows, cell_cols = np.divmod(np.arange(h * w), w)
    nearest = on[cell_rows * height // h, cell_cols * width // w]
    return np.where(total > 0, fore * 2 >= total, nearest)
