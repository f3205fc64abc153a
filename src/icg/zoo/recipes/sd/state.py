"""Where an `sd` run keeps its progress: the work folder, its JSON state, phase checkpoints.

Every phase checkpoints into ``<work>/<phase>_ckpt/`` in the one layout of `icg.checkpoints`
(the phase's model as a ``save_pretrained`` folder, the optimizer and torch RNG as safetensors,
``{"step", "wall_s", "history"}`` as JSON), so ``train(out, resume=True)`` continues where a
run stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from icg.checkpoints import save_checkpoint
from icg.io import atomic_write_json


class RecipeState:
    """The recipe's small JSON state (phase wall times, metrics), rewritten atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The value of `key`, or `default`."""
        return self.data.get(key, default)

    def update(self, **values: Any) -> None:
        """Merge `values` into the file (re-read first: a phase may run in another process)."""
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
        self.data.update(values)
        atomic_write_json(self.path, self.data, sort_keys=True)


def default_work_dir(out: Path) -> Path:
    """Checkpoints and caches live outside the shipped folder: ``$ICG_CACHE/zoo-train/<name>``."""
    root = Path(os.environ.get("ICG_CACHE", Path.home() / ".cache" / "icg"))
    return root / "zoo-train" / Path(out).resolve().name


def save_phase(
    folder: Path,
    step: int,
    optimizer: torch.optim.Optimizer,
    wall_s: float,
    history: list[Any],
    **models: Any,
) -> Path:
    """Checkpoint a phase after `step` steps: `models` (``save_pretrained``), optimizer, RNG."""
    state = {"step": step, "wall_s": wall_s, "history": history}
    return save_checkpoint(
        folder, step, state=state, optimizer=optimizer, pretrained=models, keep=1
    )
