"""Atomic training checkpoints: write to a temporary folder, rename, then prune old ones."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from pydantic import BaseModel

from icg.io import atomic_save_dir, atomic_write_yaml

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after ``step`` optimizer steps."""
    return f"{PREFIX}{step:08d}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (temporary folders are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(
    directory: str | Path,
    step: int,
    model,
    optimizer: torch.optim.Optimizer,
    state: dict,
    keep: int = 2,
) -> Path:
    """Save model (``save_pretrained``), optimizer and trainer state atomically; prune old ones.

    Args:
        directory: the checkpoints folder.
        step: optimizer steps done.
        model: anything with ``save_pretrained(dir)``.
        optimizer: its ``state_dict`` is saved with ``torch.save`` (tensors and numbers only).
        state: JSON-serialisable trainer state (step, losses, ...).
        keep: how many checkpoints to keep (older ones are deleted after a successful save).
    """

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")

    path = atomic_save_dir(Path(directory) / checkpoint_name(step), write)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", path)
    return path


def load_trainer_state(checkpoint: str | Path) -> dict:
    """The trainer state of a checkpoint."""
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())


def load_optimizer_state(checkpoint: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore an optimizer from a checkpoint (``torch.load(weights_only=True)``)."""
    state = torch.load(Path(checkpoint) / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state)


def write_run_config(out: str | Path, config: BaseModel) -> Path:
    """Write the resolved run configuration to ``out/config.yaml`` atomically (for reports)."""
    return atomic_write_yaml(Path(out) / "config.yaml", config.model_dump(mode="json"))
