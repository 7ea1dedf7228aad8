"""The process environment PyTriton's server needs, set by the toolkit rather than the user.

Triton's Python backend stub (shipped in the `nvidia-pytriton` wheel) links `libpython3.X.so`.
Found first on the system path, a different build of the same Python version (Debian's 3.11.2
under a pyenv 3.11.7, say) loads, and the stub fails at model load with
`AttributeError: '_thread.RLock' object has no attribute '_recursion_count'`. Putting the
running interpreter's own library folder first on `LD_LIBRARY_PATH` before the server starts
makes the stub load the matching library.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import MutableMapping
from pathlib import Path


def interpreter_library_dir() -> str | None:
    """The folder holding this interpreter's shared libpython, or None (a static build has none)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    version = sysconfig.get_config_var("LDVERSION") or sysconfig.get_python_version()
    if libdir and any(Path(libdir).glob(f"libpython{version}.so*")):
        return libdir
    return None


def prefer_interpreter_libpython(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Puts `interpreter_library_dir()` first on `environ["LD_LIBRARY_PATH"]`; -> the folder or None."""
    libdir = interpreter_library_dir()
    if libdir is None:
        return None
    rest = [p for p in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *rest])
    return libdir
