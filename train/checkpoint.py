"""Resumable training state stored as safetensors (never pickles).

A checkpoint is a folder with `state.safetensors` (module weights and the optimizer's tensors,
flattened) and `state.json` (step, optimizer hyper-parameters, non-tensor optimizer state).
It is written to a temporary folder and renamed, so an interrupted save never leaves a broken
checkpoint behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from runtime.files import replacing_folder


def save_checkpoint(
    folder: Path, step: int, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, extra=None
) -> None:
    """Atomically writes the training state at `step` to `folder` (replacing an older one)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module.{name}.{key}"] = value.detach().contiguous()
    optim_state = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for index, state in optim_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    meta = {"step": step, "param_groups": optim_state["param_groups"], "optim_scalars": scalars, "extra": extra or {}}
    with replacing_folder(folder, overwrite=True) as work:  # the old checkpoint stays until the new one is whole
        save_file(tensors, str(work / "state.safetensors"))
        (work / "state.json").write_text(json.dumps(meta, indent=1))


def load_checkpoint(
    folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer
) -> tuple[int, dict]:
    """Restores modules and optimizer from `folder`; returns (step, extra)."""
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    for name, module in modules.items():
        prefix = f"module.{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["optim_scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), meta.get("extra", {})


def resume(
    folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, log, what: str | None
) -> tuple[int, dict]:
    """Restores the checkpoint in `folder` if there is one and trims `log` (a LossLog) to it.

    log, what: None in the processes of a multi-process run that write no files and print nothing.
    Returns:
        (the start step, the checkpoint's `extra`); (0, {}) without a checkpoint.
    """
    if not folder.exists():
        return 0, {}
    step, extra = load_checkpoint(folder, modules, optimizer)
    if log is not None:
        log.drop_from(step)
    if what:
        print(f"resuming {what} at step {step}")
    return step, extra
