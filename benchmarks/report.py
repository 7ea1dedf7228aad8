"""A benchmark's results on disk: `<stem>.json` (every figure) and `<stem>.md` (the tables), each written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.files import write_text


def write_report(out: Path, stem: str, result: dict, markdown: str, overwrite: bool = True) -> None:
    """Writes `out/<stem>.json` and `out/<stem>.md` (through temporary files; `overwrite=False` refuses existing ones)."""
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{stem}.json", json.dumps(result, indent=1), overwrite=overwrite)
    write_text(out / f"{stem}.md", markdown, overwrite=overwrite)
