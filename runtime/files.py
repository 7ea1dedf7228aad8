"""Writing files and folders so that a failed write never damages what was there before.

Every file the toolkit writes over an existing one goes through `replacing_file`: the new
content is written to a temporary file in the target's own directory (same file system, so the
final `os.replace` is atomic), flushed to disk, and renamed over the target only once complete.
A write that fails halfway (disk full, a killed process, an exception while serialising) leaves
the old file untouched and no temporary file behind (a process killed outright can leave a
`.NAME.*.tmp` file beside the target, never a damaged target). Folders (engine directories,
model sub-folders, checkpoints) go through `replacing_folder`: assembled under a temporary name
beside the target, then swapped in with two renames, the old folder removed only after the new
one is in place. A replaced file keeps its permission bits; a new one gets the umask's.

    with replacing_file(path, overwrite=True) as tmp, open(tmp, "wb") as f:   # tmp: a Path beside path
        np.savez(f, ...)                  # a file object: numpy would append ".npz" to a bare path
    write_text(path, json.dumps(...))     # the same for text

Torch-free: the runtime, export and training all use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputError(OSError):
    """A path cannot be written: it exists (without overwrite), is a folder, lies under a file, or is not writable."""


class OutputExistsError(OutputError, FileExistsError):
    """The path exists and overwriting was not asked for."""


def check_writable(path: Path, overwrite: bool, folder: bool = False) -> None:
    """Raises OutputError when `path` cannot take a new file (or folder) in the way asked."""
    if path.exists():
        if folder != path.is_dir():
            want, got = ("folder", "file") if folder else ("file", "folder")
            raise OutputError(f"{path} is a {got}, not a {want}; give a path for the {want} itself")
        if not overwrite:
            raise OutputExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"cannot write {path}: {parent} is not writable; choose another location")
            break


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, racing other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _fsync_directory(directory: Path) -> None:
    """Makes a rename in `directory` durable (POSIX); a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing_file(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it to `path` when the block succeeds.

    Args:
        overwrite: replace an existing `path` (otherwise OutputError before anything is written).
    Raises:
        OutputError: `path` exists without `overwrite`, is a folder, or its folder is not writable.
        OSError: the write itself failed (e.g. disk full); `path` is then as it was.
    """
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        # mkstemp's 0600 would hide the result from other users; a replaced file keeps its own mode.
        tmp.chmod(stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have closed its handle: flush what it wrote to disk
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = True) -> Path:
    """Writes `data` to `path` through a temporary file (see `replacing_file`)."""
    with replacing_file(path, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """Writes `text` (UTF-8) to `path` through a temporary file (see `replacing_file`)."""
    return write_bytes(path, text.encode("utf-8"), overwrite)


@contextlib.contextmanager
def replacing_folder(path: str | os.PathLike, overwrite: bool = False, keep_failed: bool = False) -> Iterator[Path]:
    """Yields a fresh temporary folder beside `path`; swaps it in for `path` when the block succeeds.

    The old folder is renamed aside, the new one renamed into place, and only then is the old one
    removed: at every moment either the old or the new folder is complete under some name.

    Args:
        overwrite: replace an existing `path` (otherwise OutputError before anything is written).
        keep_failed: on failure keep the temporary folder (named in the error output) for inspection.
    """
    path = Path(path)
    check_writable(path, overwrite, folder=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_failed:  # one fixed name, so failed attempts do not pile up: the next attempt clears it
        work = path.with_name(f".{path.name}.partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
    else:
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        work.chmod(0o777 & ~_umask())
        yield work
    except BaseException:
        if keep_failed:
            print(f"failed; partial files left in {work} for inspection", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
        raise
    old = None
    try:
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(work, path)
    except BaseException:
        if old is not None:  # put the old folder back: the target must never be left missing
            if (old / path.name).exists():
                os.replace(old / path.name, path)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        raise
    _fsync_directory(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_folder(path: Path) -> None:
    """Raises OutputError unless `path` is a writable folder or can be created as one."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a folder; give a folder for the outputs")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write into {path}: it is not writable; choose another folder")
        return
    check_writable(path, overwrite=False, folder=True)
