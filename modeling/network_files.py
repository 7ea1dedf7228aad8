"""A small learned network on disk: `config.json` (its architecture and how it was made) + `model.safetensors`.

The read-outs (`modeling.readouts`) and the distilled query encoder (`modeling.query_encoders`)
are stored this way, each in its own folder of the model folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from runtime.files import replacing_folder, write_text

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_network(network: nn.Module, folder: Path, info: dict | None = None) -> Path:
    """Writes `folder/config.json` (`network.config`, a dataclass, + `info`) and the weights, swapped in whole."""
    folder = Path(folder)
    state = {k: v.detach().float().contiguous() for k, v in network.state_dict().items()}
    with replacing_folder(folder, overwrite=True) as work:  # never half old, half new
        write_text(work / CONFIG, json.dumps({"architecture": asdict(network.config), **(info or {})}, indent=1))
        save_file(state, str(work / WEIGHTS), metadata={"format": "pt"})
    return folder


def read_network_files(folder: Path, what: str, train_command: str) -> tuple[dict, dict]:
    """(architecture, state dict) of the network stored in `folder`.

    Raises:
        FileNotFoundError naming `what` and the command that makes one, when a file is missing.
    """
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} holds no {what} ({CONFIG} + {WEIGHTS}); train one with {train_command}")
    return json.loads((folder / CONFIG).read_text())["architecture"], load_file(str(folder / WEIGHTS))
