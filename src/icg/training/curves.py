"""Training curves: ``curves.jsonl``, one JSON object per logged step, appended whole.

Each row is written with a single ``write`` of one complete line, so an interrupted run leaves at
most a torn last line; readers skip such a line with a warning instead of failing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from icg.io import atomic_write_text
from icg.layout import CURVES_FILE

logger = logging.getLogger(__name__)

__all__ = ["CURVES_FILE", "append_curve", "read_curves", "truncate_curves"]


def append_curve(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row as a single complete line (after a newline when an interrupted run left
    a torn last line, so the torn line never swallows the new row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row) + "\n"
    with path.open("ab") as f:
        if f.tell() > 0:
            with path.open("rb") as r:
                r.seek(-1, 2)
                if r.read(1) != b"\n":
                    line = "\n" + line
        f.write(line.encode("utf-8"))


def read_curves(path: str | Path) -> list[dict[str, Any]]:
    """Every complete row of a curves file (``[]`` when absent); a torn line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            logger.warning("%s:%d: skipped a torn or malformed line", path, number)
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        else:
            logger.warning("%s:%d: skipped a row without a step", path, number)
    return rows


def truncate_curves(path: str | Path, step: int) -> None:
    """On resume from ``step``, keep the rows up to it (later ones will be logged again)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [row for row in read_curves(path) if step > 0 and row["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in keep))
