"""`BankStore`: support banks on a shared directory (local disk, NFS, an object-store mount).

Every replica of a server points at the same directory, so a support registered on one is
served by all, and a restart loses nothing. Layout: `DIR/<bank source[:16]>/<support id>.npz`,
each file written through a temporary name and a rename (`runtime.bank_files`): a reader on
another machine sees the whole file or none. Ids are content hashes, so two replicas writing
the same id write the same bytes and the last rename is as good as the first.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from runtime.bank_files import read_bank_file, write_bank_file


class BankStore:
    """The banks of one model (`model_hash`) under `directory`.

    Args:
        source: what else the banks depend on (`runtime.serve.service.bank_source`: the support
            encoder's files and the backend); it names the folder, so engines built another way
            keep their banks apart. Default: the model hash.
    """

    def __init__(self, directory: str | os.PathLike, model_hash: str, source: str | None = None):
        self.root = Path(directory)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--bank-store {self.root} is a file; pass a directory (it is created if missing)")
        self.model_hash = model_hash
        self.directory = self.root / (source or model_hash)[:16]
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, support_id: str) -> Path:
        return self.directory / f"{support_id}.npz"

    def __contains__(self, support_id: str) -> bool:
        return self.path(support_id).is_file()

    def write(
        self, support_id: str, arrays: dict[str, np.ndarray], meta: dict[str, str], replace: bool = False
    ) -> Path:
        """Stores a bank under its id: a no-op when it is there already, unless `replace` (a damaged file)."""
        path = self.path(support_id)
        if path.is_file() and not replace:
            return path
        return write_bank_file(path, arrays, self.model_hash, overwrite=True, meta={**meta, "support_id": support_id})

    def read(self, support_id: str) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
        """(the bank's tensors, its text tags: support_shots, selection, ...), or None when the store does not hold the id.

        Raises ValueError when the file is there but damaged or not this model's.
        """
        path = self.path(support_id)
        if not path.is_file():
            return None
        arrays, meta = read_bank_file(path, self.model_hash)
        if meta.get("support_id", support_id) != support_id:
            raise ValueError(f"{path} holds the bank of support id {meta['support_id'][:12]}, not {support_id[:12]}")
        return arrays, meta
