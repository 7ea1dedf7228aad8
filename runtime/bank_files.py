"""Support-bank files: the .npz that `FewShotSegmenter.save_support` writes and a server's bank store holds.

A bank file holds a format tag, the model hash of the engines that computed it, optional text
tags (`meta_*`: the backend, the support id) and the bank's tensors, name -> (S, N_l, C_l) float32.
It is written beside its final name and renamed into place (`runtime.files`), so a reader never
sees half a file.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from runtime.files import replacing_file

BANK_FORMAT = "diffews-support-bank"
META_PREFIX = "meta_"


def write_bank_file(
    path: str | os.PathLike,
    arrays: dict[str, np.ndarray],
    model_hash: str,
    overwrite: bool = False,
    meta: dict[str, str] | None = None,
) -> Path:
    """Writes `arrays` tagged with `model_hash` (and `meta` text tags) through a temporary file.

    Raises `runtime.files.OutputError` when `path` exists without `overwrite`, is a folder, or
    cannot be written; a failed write leaves an existing file as it was.
    """
    path = Path(path)
    tags = {f"{META_PREFIX}{k}": np.array(str(v)) for k, v in (meta or {}).items()}
    with replacing_file(path, overwrite) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no ".npz"
        np.savez(f, format=np.array(BANK_FORMAT), model_hash=np.array(model_hash), **tags, **arrays)
    return path


def read_bank_file(path: str | os.PathLike, model_hash: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """-> (tensors, meta tags) of a bank file computed by the model `model_hash`.

    Raises FileNotFoundError, or ValueError naming what is wrong (not a bank, another model's
    bank, unreadable) and how to fix it. The tensors are not checked against any engines here:
    `FewShotSegmenter.check_bank` does that.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such support bank file: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds one array (.npy), not the named tensors save_support writes")
        with data:
            contents = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(
            f"{path} is not a readable support bank (.npz written by save_support): {err or type(err).__name__}"
        ) from err
    if str(contents.pop("format", "")) != BANK_FORMAT:
        raise ValueError(f"{path} is not a DiffewS support bank written by save_support (no format tag)")
    if "model_hash" not in contents:
        raise ValueError(f"{path} records no model_hash, so its model is unknown; recompute it with set_support")
    found = str(contents.pop("model_hash"))
    if found != model_hash:
        raise ValueError(
            f"{path} was computed by another model (hash {found[:12]}, these engines "
            f"{model_hash[:12]}); recompute it with set_support"
        )
    meta = {k[len(META_PREFIX) :]: str(contents.pop(k)) for k in list(contents) if k.startswith(META_PREFIX)}
    return contents, meta
