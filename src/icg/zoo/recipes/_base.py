"""What every coverworld-tiny recipe shares: seeds, threads, checkpoints, progress, gates, cards.

A recipe reads as `setup → train → save_checkpoint → publish → gates → card`. Training data is a
pure function of the step (`zoo_seed(offset + step)`), so a run resumed from a checkpoint sees
exactly the batches the uninterrupted run would have seen. Checkpoints use the one layout of
`icg.checkpoints` (under ``<out>/checkpoints/``); every file is written through `icg.io`.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from icg.checkpoints import (
    latest_checkpoint,
    load_optimizer_state,
    load_trainer_state,
    load_weights,
    save_checkpoint,
)
from icg.io import atomic_dir, atomic_write_json, atomic_write_text
from icg.seeding import seed_everything
from icg.training.ema import WeightEMA, ema_checkpoint_parts, restore_ema
from icg.zoo import evaldata
from icg.zoo.gates import GATES_FILE, gate_passed
from icg.zoo.gates import folder_size as folder_size  # re-exported: recipes and tests use _base
from icg.zoo.gates import read_gates as read_gates  # re-exported

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"  # icg.checkpoints folders, inside the output folder
CARD_FILE = "README.md"
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def setup_torch(seed: int, threads: int = 1) -> None:
    """Seed (`seed_everything`: deterministic kernels too) and keep to `threads` CPU threads
    (the recipe machine is shared)."""
    torch.set_num_threads(threads)
    seed_everything(seed)


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """Linear warmup to `peak`, then cosine decay to ``floor * peak`` (Loshchilov & Hutter 2017,
    SGDR eq. 5, with eta_min = floor * peak).

    Written so that ``floor=0`` and ``peak=1`` each give bit-identical values to the plain forms
    ``0.5 * peak * (1 + cos)`` and ``floor + (1 - floor) * 0.5 * (1 + cos)``.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor * peak + (1.0 - floor) * 0.5 * peak * (1.0 + math.cos(math.pi * progress))


def images_to_tensor(images: Any) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy → CLIP-normalised float (N, 3, H, W)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def stage(out: Path, write: Callable[[Path], Any]) -> Path:
    """Write the final folder beside `out` (``.<name>.publish``, atomically) through
    ``write(folder)``, so its gates are measured before `publish_files` moves it into `out`."""
    staged = Path(out).with_name(f".{Path(out).name}.publish")
    with atomic_dir(staged) as tmp:
        write(tmp)
    return staged


def publish_files(src: Path, out: Path) -> None:
    """Move every file of the staged folder `src` into `out`, each by an atomic rename."""
    out.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        dest = out / item.name
        if dest.is_dir() and item.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)
    shutil.rmtree(src, ignore_errors=True)


@dataclass
class Progress:
    """What a checkpoint's ``trainer_state.json`` carries besides tensors.

    Args:
        step: optimizer steps done.
        elapsed_s: training wall time summed over all runs (resumes included).
        history: (step, loss) pairs logged so far.
    """

    step: int = 0
    elapsed_s: float = 0.0
    history: list[tuple[int, float]] = field(default_factory=list)


def save_progress(
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    ema: WeightEMA | None = None,
) -> Path:
    """Checkpoint ``model`` (as ``model.safetensors``), the optimizer, the RNG, `progress` and
    the weight EMA when there is one (``ema.safetensors``)."""
    ema_state, ema_tensors = ema_checkpoint_parts(ema)
    state = {"step": progress.step, "elapsed_s": progress.elapsed_s, "history": progress.history}
    return save_checkpoint(
        Path(out) / CHECKPOINT_DIR,
        progress.step,
        state={**state, **ema_state},
        optimizer=optimizer,
        weights={"model": model},
        tensors=ema_tensors,
        keep=1,
    )


def resume_progress(
    out: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: WeightEMA | None = None,
) -> Progress | None:
    """Restore the newest checkpoint of `save_progress` (model, optimizer, RNG, EMA); None if
    none."""
    ckpt = latest_checkpoint(Path(out) / CHECKPOINT_DIR)
    if ckpt is None:
        return None
    load_weights(ckpt, "model", model)
    load_optimizer_state(ckpt, optimizer)
    state = load_trainer_state(ckpt)
    restore_ema(ema, ckpt, state)
    logger.info("resumed from %s at step %d", ckpt, state["step"])
    history = [(int(s), float(v)) for s, v in state["history"]]
    return Progress(step=state["step"], elapsed_s=state["elapsed_s"], history=history)


def progress(total: int, initial: int, desc: str) -> tqdm:
    """A tqdm bar that also reads sensibly when redirected to a log file."""
    return tqdm(total=total, initial=initial, desc=desc, mininterval=5.0, dynamic_ncols=True)


def clear_checkpoint(out: Path) -> None:
    """Remove the checkpoint folder once the final weights are published."""
    shutil.rmtree(Path(out) / CHECKPOINT_DIR, ignore_errors=True)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of `model`."""
    return sum(p.numel() for p in model.parameters())


def write_gates(out: Path, record: dict[str, Any]) -> None:
    """Write `gates.json`: metrics, thresholds, pass/fail, parameters, wall time."""
    atomic_write_json(Path(out) / GATES_FILE, record, sort_keys=True)


def gate_record(
    name: str,
    metrics: dict[str, float],
    thresholds: dict[str, float],
    parameters: int,
    wall_time_s: float,
    gate_data: str,
    **extra: Any,
) -> dict[str, Any]:
    """The `gates.json` record every recipe writes (pass/fail derived from the thresholds)."""
    return {
        "name": name,
        "metrics": metrics,
        "thresholds": thresholds,
        "passed": gate_passed(metrics, thresholds),
        "parameters": parameters,
        "wall_time_s": round(wall_time_s, 1),
        "gate_data": gate_data,
        **extra,
    }


def targets_met(metrics: dict[str, float], targets: dict[str, float]) -> dict[str, bool]:
    """Which `targets` (metric -> lower bound) the metrics reach."""
    return {k: bool(metrics[k] >= v) for k, v in targets.items() if k in metrics}


def machine_line() -> str:
    """One line describing the machine a recipe ran on."""
    threads = torch.get_num_threads()
    return f"{platform.machine()} CPU, {os.cpu_count()} cores visible, torch threads={threads}"


def write_card(
    out: Path,
    *,
    name: str,
    summary: str,
    loading: str,
    data: str,
    recipe: str,
    config: dict[str, Any],
    parameters: int,
    gates: dict[str, float],
    thresholds: dict[str, float],
    gate_data: str,
    wall_time_s: float,
    loading_heading: str = "Loading (no icg code needed)",
) -> None:
    """Write the model card README.md of a shipped model folder."""
    rows = "\n".join(
        f"| {k} | {v:.4f} | {'≥ ' + format(thresholds[k], 'g') if k in thresholds else '-'} |"
        for k, v in sorted(gates.items())
    )
    cfg = "\n".join(f"- `{k}`: {v}" for k, v in config.items())
    text = f"""# coverworld-tiny `{name}`

{summary}

## {loading_heading}

```python
{loading.strip()}
```

## Data

{data}

Recipe: `icg zoo train {name} --out DIR` ({recipe}).

## Parameters

{parameters:,} parameters. Recipe configuration:

{cfg}

## Gates

Measured by the recipe on {gate_data}; `icg zoo evaluate {name} --world DIR --json` measures
them on any CoverWorld folder.

| metric | value | gate |
|---|---|---|
{rows}

## Wall time

{wall_time_s / 60:.1f} min of recipe wall time ({machine_line()}).
"""
    atomic_write_text(Path(out) / CARD_FILE, text)


@dataclass
class Timer:
    """Accumulates wall time across resumed runs."""

    start: float = field(default_factory=time.perf_counter)
    before: float = 0.0

    def total(self) -> float:
        """Seconds before this run plus seconds since `start`."""
        return self.before + time.perf_counter() - self.start


@dataclass
class Published:
    """What `publish_with_gates` measured, for the model card."""

    metrics: dict[str, float]
    parameters: int
    wall_time_s: float
    gate_source: str


def publish_with_gates(
    out: Path,
    name: str,
    model: torch.nn.Module,
    write: Callable[[Path], Any],
    measure: Callable[[Path, Any], dict[str, float]],
    gate_items: int,
    thresholds: dict[str, float],
    train_s: float,
    targets: dict[str, float] | None = None,
) -> Published:
    """The end of every recipe: stage the final folder, measure its gates on fresh renders,
    publish it, drop the checkpoints and write ``gates.json``.

    `targets` are goals beyond the gates: recorded with ``targets_met``, not part of ``passed``.
    """

    staged = stage(out, write)
    timer = Timer(before=train_s)
    gate_set = evaldata.fresh_covers(gate_items)
    metrics = measure(staged, gate_set)
    params = count_parameters(model)
    publish_files(staged, out)
    clear_checkpoint(out)
    wall = timer.total()
    extra = {"targets": targets, "targets_met": targets_met(metrics, targets)} if targets else {}
    write_gates(out, gate_record(name, metrics, thresholds, params, wall, gate_set.source, **extra))
    return Published(metrics, params, wall, gate_set.source)
