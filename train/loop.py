"""Pieces shared by the training loops: learning-rate schedule, step seeding, loss logging."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from runtime.files import write_text


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor * peak` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def linear_lr(step: int, total: int, peak: float, end: float = 1e-7) -> float:
    """diffusers' "polynomial" schedule with power 1 and no warm-up: `peak` at step 0 to `end` at `total`."""
    progress = min(1.0, step / max(1, total))
    return end + (peak - end) * (1.0 - progress)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def seed_step(seed: int, stage: int, step: int) -> None:
    """Seeds torch for one step, so a resumed run draws the same noise as an uninterrupted one."""
    torch.manual_seed((seed * 1_000_003 + stage * 10_007 + step) % (2**63))


class LossLog:
    """Appends one JSON line per logged step to `path` (kept across resumes)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.time()

    def write(self, step: int, **values: float) -> None:
        record = {"step": step, "time_s": round(time.time() - self.start, 2)}
        record.update({k: round(float(v), 6) for k, v in values.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def drop_from(self, step: int) -> None:
        """Drops records of steps >= `step`: a run that died after its last checkpoint logged them,
        and the resumed run (which starts at `step`) logs them again."""
        if not self.path.exists():
            return
        lines = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] < step]
        write_text(self.path, "".join(ln + "\n" for ln in lines))
