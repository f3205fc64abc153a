"""Training checkpoints: one layout for every recipe and stage (stage A, stage B, preference, zoo).

    <directory>/checkpoint-00000050/
        trainer_state.json        # JSON: step, history, config, ... (whatever the recipe keeps)
        optimizer.safetensors     # optimizer state tensors + the torch RNG; param groups in metadata
        <name>.safetensors        # ``weights={name: module}``: a plain state_dict
        <name>/                   # ``pretrained={name: obj}``: ``obj.save_pretrained(folder)``
        <name>.safetensors        # ``tensors={name: {key: tensor}}``: named tensors (e.g. an EMA)

A checkpoint is written in a temporary folder and renamed into place (`icg.io.atomic_save_dir`),
so a folder named ``checkpoint-<8 digits>`` is always complete; other names are never listed.
Nothing is unpickled on load: tensors come from safetensors, the rest from JSON.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from icg.artifacts import ArtifactError, read_json_object, read_safetensors
from icg.io import atomic_save_dir, atomic_write_yaml
from icg.layout import RUN_CONFIG_FILE

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
_NAME = re.compile(rf"^{PREFIX}(\d{{8}})$")
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
_RNG_KEY = "rng.torch"
EMA_TENSORS = "ema"  # ``<checkpoint>/ema.safetensors``: a run's EMA weights (`icg.training.ema`)


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after ``step`` optimizer steps."""
    return f"{PREFIX}{step:08d}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first.

    Temporary and foreign names are ignored, and so are symlinks and folders with the right
    name but no trainer state (not written by `save_checkpoint`), with a warning.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        if not _NAME.match(p.name):
            continue
        if p.is_symlink() or not p.is_dir() or not (p / STATE_FILE).is_file():
            logger.warning("%s: not a complete checkpoint, ignored", p)
            continue
        found.append(p)
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights)
    return {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}


def save_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """Optimizer state tensors and the torch RNG as safetensors; param groups as JSON metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {_RNG_KEY: torch.get_rng_state()}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            tensors[f"state.{idx}.{key}"] = torch.as_tensor(value).detach().contiguous().clone()
    save_file(tensors, str(path), metadata={"param_groups": json.dumps(state["param_groups"])})


def save_checkpoint(
    directory: str | Path,
    step: int,
    *,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    weights: Mapping[str, torch.nn.Module] | None = None,
    pretrained: Mapping[str, Any] | None = None,
    tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    keep: int = 2,
) -> Path:
    """Save a checkpoint atomically, then prune all but the newest ``keep``.

    Args:
        directory: the checkpoints folder.
        step: optimizer steps done (names the folder).
        state: JSON-serialisable trainer state (step, losses, config, ...).
        optimizer: saved with the torch RNG state.
        weights: modules saved as plain state dicts (``<name>.safetensors``).
        pretrained: objects with ``save_pretrained(folder)`` (``<name>/``).
        tensors: named tensors saved as they are (``<name>.safetensors``), e.g. an EMA's weights.
        keep: how many checkpoints to keep (0: keep all).
    """

    def write(tmp: Path) -> None:
        for name, module in (weights or {}).items():
            save_file(_state_dict(module), str(tmp / f"{name}.safetensors"))
        for name, values in (tensors or {}).items():
            clean = {k: v.detach().contiguous().clone() for k, v in values.items()}
            save_file(clean, str(tmp / f"{name}.safetensors"))
        for name, obj in (pretrained or {}).items():
            obj.save_pretrained(tmp / name)
        if optimizer is not None:
            save_optimizer(tmp / OPTIMIZER_FILE, optimizer)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    path = atomic_save_dir(Path(directory) / checkpoint_name(step), write)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", path)
    return path


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint (`icg.artifacts.ArtifactError` when unreadable)."""
    state = read_json_object(Path(checkpoint) / STATE_FILE, "the trainer state")
    if not isinstance(state.get("step"), int) or state["step"] < 0:
        raise ArtifactError(f"{Path(checkpoint) / STATE_FILE}: 'step' must be an int >= 0")
    return state


load_trainer_state = read_trainer_state


def load_weights(checkpoint: str | Path, name: str, module: torch.nn.Module) -> None:
    """Load ``<name>.safetensors`` of a checkpoint into ``module`` (strict; key set, shapes and
    finite values checked first)."""
    file = Path(checkpoint) / f"{name}.safetensors"
    tensors, _ = read_safetensors(file, {k: v.shape for k, v in module.state_dict().items()})
    module.load_state_dict(tensors)


def load_tensors(
    checkpoint: str | Path, name: str, expected: Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """The named tensors saved by ``save_checkpoint(tensors={name: ...})`` (with ``expected``,
    ``{key: shape}``, the key set and shapes are checked before any tensor is read)."""
    tensors, _ = read_safetensors(Path(checkpoint) / f"{name}.safetensors", expected)
    return tensors


def load_optimizer_state(
    checkpoint: str | Path, optimizer: torch.optim.Optimizer, restore_rng: bool = True
) -> None:
    """Restore an optimizer (and, by default, the torch RNG) from a checkpoint.

    Raises:
        ArtifactError: the file is truncated, holds NaN/inf, or does not fit ``optimizer``.
    """
    path = Path(checkpoint) / OPTIMIZER_FILE
    tensors, metadata = read_safetensors(path)
    try:
        groups = json.loads(metadata["param_groups"])
        rng = tensors.pop(_RNG_KEY)
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            _, idx, slot = key.split(".", 2)
            slots.setdefault(int(idx), {})[slot] = value
        state = {"state": slots, "param_groups": groups}
        optimizer.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise ArtifactError(f"{path}: does not fit this optimizer ({err})") from err
    if restore_rng:
        torch.set_rng_state(rng)


def write_run_config(out: str | Path, config: Any) -> Path:
    """Write a run's resolved pydantic configuration to ``out/config.yaml`` atomically."""

    return atomic_write_yaml(Path(out) / RUN_CONFIG_FILE, config.model_dump(mode="json"))
