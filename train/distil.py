"""What the distillation commands share (`train.mask_decoder`, `train.query_encoder`): the data
flags, and the optimisation loop that fits a small network to a frozen teacher's outputs."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from modeling.diffews_folder import read_config


def add_data_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--data, --data-root and --fold: which episodes `what` comes from (`train.mask_decoder.episode_sources`)."""
    parser.add_argument(
        "--data", choices=("synth", "coco20i", "folders"), default="synth",
        help=f"{what}: the synthetic world (default), COCO-20i or class folders",
    )  # fmt: skip
    parser.add_argument("--data-root", type=Path, default=None, help="data set folder for coco20i / folders")
    parser.add_argument(
        "--fold", type=int, default=None, help="class fold (default: the model's training fold, else 0)"
    )


def data_fold(args: argparse.Namespace) -> int:
    """--fold, else the fold the model in --model was trained on, else 0."""
    return args.fold if args.fold is not None else int(read_config(args.model).get("data", {}).get("fold", 0))


def fit(network: nn.Module, batch_loss: Callable[[], torch.Tensor], steps: int, lr: float, seed: int, desc: str):
    """AdamW with a one-cycle schedule on `batch_loss()` (a fresh batch each call) -> (network in eval
    mode, the mean loss of the last 100 steps)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    network.train()
    losses = []
    for _ in (bar := tqdm(range(steps), desc=desc, unit="step")):
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    return network.eval(), float(np.mean(losses[-100:]))


def distillation_record(
    command: str,
    argv: list[str] | None,
    args: argparse.Namespace,
    data: dict,
    final_loss: float,
    figures: dict,
    data_s: float,
    start: float,
) -> dict:
    """What a distilled network's config.json keeps of how it was made: the model, the command line,
    the data (`data`, e.g. {"samples": N}), steps, final loss, held-out figures and wall time."""
    return {
        "distilled_from": str(args.model),
        "command": f"python -m {command} " + " ".join(argv if argv is not None else sys.argv[1:]),
        **data,
        "steps": args.steps,
        "final_loss": round(final_loss, 5),
        "agreement_held_out": figures,
        "wall_time_s": {"data": round(data_s, 1), "total": round(time.time() - start, 1)},
    }
