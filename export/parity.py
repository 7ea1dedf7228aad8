"""Parity of an exported graph against the PyTorch module on sample inputs, judged by the descriptor's tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from runtime.contract import GraphSpec
from segdata.metrics import mask_iou


class ParityError(RuntimeError):
    """An exported graph disagrees with PyTorch beyond its declared tolerance."""


@dataclass
class ParityRow:
    """One output of one graph on one sample."""

    graph: str
    sample: str
    output: str
    metric: str  # "rel_l2" (float outputs) or "iou" (masks)
    value: float
    limit: float
    passed: bool

    def to_json(self) -> dict:
        return asdict(self)


def compare_outputs(spec: GraphSpec, sample: str, got: list[np.ndarray], want: list[np.ndarray]) -> list[ParityRow]:
    """Rows comparing the graph's outputs `got` to PyTorch's `want`, output by output."""
    rows = []
    tol = spec.tolerance
    for out, g, w in zip(spec.outputs, got, want):
        if g.shape != w.shape:
            rows.append(ParityRow(spec.name, sample, out.name, "shape", float("nan"), float("nan"), False))
        elif out.dtype == "uint8":
            iou = mask_iou(g, w)
            rows.append(ParityRow(spec.name, sample, out.name, "iou", iou, tol.min_iou, iou >= tol.min_iou))
        else:
            ref = w.astype(np.float64)
            err = float(np.linalg.norm(g.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-12))
            rows.append(ParityRow(spec.name, sample, out.name, "rel_l2", err, tol.max_rel_l2, err <= tol.max_rel_l2))
    return rows


def summarise(rows: list[ParityRow]) -> list[ParityRow]:
    """The worst row per (graph, metric), over samples and outputs: what the table and the manifest show.

    A failing row beats a passing one; otherwise the lowest IoU or the largest error.
    """
    groups: dict[tuple[str, str], list[ParityRow]] = {}
    for row in rows:
        groups.setdefault((row.graph, row.metric), []).append(row)
    worst = []
    for group in groups.values():
        if group[0].metric == "iou":
            row = min(group, key=lambda r: (r.passed, r.value))
        else:
            row = min(group, key=lambda r: (r.passed, -r.value))
        outputs = sorted({r.output for r in group})
        label = row.output if len(outputs) == 1 else f"{row.output} (worst of {len(outputs)} outputs)"
        worst.append(ParityRow(row.graph, row.sample, label, row.metric, row.value, row.limit, row.passed))
    return worst


def parity_table(rows: list[ParityRow]) -> str:
    """A markdown table of the worst case per graph output."""
    lines = ["| graph | output | sample | metric | worst | limit | ok |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in summarise(rows):
        bound = ">=" if r.metric == "iou" else "<="
        lines.append(
            f"| {r.graph} | {r.output} | {r.sample} | {r.metric} | {r.value:.3g} | {bound} {r.limit:.3g} "
            f"| {'yes' if r.passed else 'NO'} |"
        )
    return "\n".join(lines)


def check_parity(rows: list[ParityRow]) -> None:
    """Raises ParityError listing every failing output."""
    failed = [r for r in rows if not r.passed]
    if failed:
        details = "; ".join(
            f"{r.graph}.{r.output} on {r.sample}: {r.metric} {r.value:.4g} vs {r.limit:.4g}" for r in failed
        )
        raise ParityError(f"exported graphs disagree with PyTorch: {details}")
