"""A zoo model folder's gate record (``gates.json``) and size: what `icg zoo list` reads.

Kept apart from the recipes (`icg.zoo.recipes._base`, which write the record) so that listing the
zoo loads no training code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GATES_FILE = "gates.json"


def folder_size(path: Path) -> int:
    """Bytes of all files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def read_gates(path: Path) -> dict[str, Any] | None:
    """The `gates.json` of a model folder, or None."""
    file = Path(path) / GATES_FILE
    if not file.exists():
        return None
    return json.loads(file.read_text(encoding="utf-8"))


def gate_passed(metrics: dict[str, float], thresholds: dict[str, float]) -> bool:
    """Every thresholded metric at or above its threshold."""
    return all(metrics.get(k, float("-inf")) >= v for k, v in thresholds.items())
