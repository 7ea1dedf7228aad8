"""How the runtime's command-line tools report errors: one line naming the problem and the fix, a distinct exit code.

    with reporting_errors():
        ...  # the CLI's work; an expected error becomes `error: ...` on stderr and SystemExit(code)

| exit code | meaning |
| --- | --- |
| 2 | bad command line (argparse) |
| 3 | bad input: an image, mask, support bank, threshold or shot count (`ValueError`), or a missing input file |
| 4 | the engine directory is missing, incomplete, modified or malformed (`EngineDirError`) |
| 5 | an output cannot be written as asked: it exists (pass --overwrite), is a folder, or lies under a file |
| 6 | the backend is not available here or failed (`RuntimeError`: missing package, no GPU, inference error) |
| 7 | the operating system refused a read or write (`OSError`: disk full, permissions, read-only file system) |
"""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Iterator
from pathlib import Path

from runtime.files import OutputError, check_output_folder
from runtime.manifest import EngineDirError

EXIT_USAGE, EXIT_INPUT, EXIT_ENGINES, EXIT_OUTPUT, EXIT_BACKEND, EXIT_SYSTEM = 2, 3, 4, 5, 6, 7

_SYSTEM_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere; nothing existing was overwritten",
    errno.EFBIG: "the file size limit was reached; raise it (ulimit -f) or write elsewhere",
    errno.EACCES: "check the permissions or choose another path",
    errno.EPERM: "check the permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.EDQUOT: "the disk quota is exhausted; free some space or write elsewhere",
}


def overwrite_refusal(paths, overwrite: bool) -> str | None:
    """The one-line refusal when some of `paths` exist and --overwrite was not given, else None."""
    existing = [Path(p) for p in paths if Path(p).exists()]
    if overwrite or not existing:
        return None
    if len(existing) == 1:
        return f"{existing[0]} exists; pass --overwrite to replace it (nothing was written)"
    return f"{existing[0]} (and {len(existing) - 1} more) exist; pass --overwrite to replace them (nothing was written)"


def refuse_to_overwrite(paths, overwrite: bool) -> None:
    """Exits with `error: ...` (status 1) before any work when an output exists without --overwrite."""
    message = overwrite_refusal(paths, overwrite)
    if message:
        raise SystemExit(f"error: {message}")


def check_outputs(folder: Path, stems: list[str], kinds: tuple[str, ...], overwrite: bool) -> list[Path]:
    """`folder/STEM_KIND.png` for every input stem and output kind, checked before any work is done.

    Raises ValueError when two inputs share a stem, OutputError when an output exists without
    `overwrite` or `folder` cannot be written.
    """
    if len(set(stems)) != len(stems):
        raise ValueError("input file names must differ (outputs are named after them)")
    outputs = [folder / f"{stem}_{kind}.png" for stem in stems for kind in kinds]
    message = overwrite_refusal(outputs, overwrite)
    if message:
        raise OutputError(message)
    check_output_folder(folder)
    return outputs


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def _system_message(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    reason = err.strerror or str(err) or type(err).__name__
    hint = _SYSTEM_HINTS.get(err.errno, "")
    return f"{where}{reason}" + (f"; {hint}" if hint else "")


def fail(code: int, message: str) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr)
    raise SystemExit(code)


@contextlib.contextmanager
def reporting_errors() -> Iterator[None]:
    """Turns the runtime's expected errors into one line on stderr and a distinct exit code (module table)."""
    try:
        yield
    except EngineDirError as err:  # a ValueError: before the generic input case
        fail(EXIT_ENGINES, str(err))
    except (OutputError, FileExistsError, IsADirectoryError, NotADirectoryError) as err:
        fail(EXIT_OUTPUT, str(err) if isinstance(err, OutputError) else _system_message(err))
    except FileNotFoundError as err:
        fail(EXIT_INPUT, str(err) if not err.filename else f"no such file: {err.filename}")
    except ValueError as err:
        fail(EXIT_INPUT, str(err))
    except OSError as err:
        fail(EXIT_SYSTEM, _system_message(err))
    except (RuntimeError, MemoryError, ImportError) as err:  # ImportError: a backend's package is missing
        fail(EXIT_BACKEND, str(err) or type(err).__name__)
