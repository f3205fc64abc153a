"""What every coverworld-tiny recipe shares: seeds, threads, atomic checkpoints, progress, cards.

A recipe reads as `setup → train → save → evaluate → card`. Training data is a pure function of
the step (`zoo_seed(offset + step)`), so a run resumed from a checkpoint sees exactly the batches
the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
GATES_FILE = "gates.json"
CARD_FILE = "README.md"
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def setup_torch(seed: int, threads: int = 1) -> None:
    """Seed torch and keep to `threads` CPU threads (the recipe machine is shared)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def cosine_lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak`, then cosine decay to 0 (Loshchilov & Hutter 2017, SGDR eq. 5)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def images_to_tensor(images: Any) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy → CLIP-normalised float (N, 3, H, W)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder beside `target`; on success it replaces `target` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temp name in the same folder and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
class TrainState:
    """Progress that a checkpoint carries besides tensors.

    Args:
        step: optimizer steps done.
        elapsed_s: training wall time summed over all runs (resumes included).
        history: (step, loss) pairs logged so far.
    """

    step: int = 0
    elapsed_s: float = 0.0
    history: list[tuple[int, float]] = field(default_factory=list)


def save_checkpoint(
    out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState
) -> None:
    """Atomically write model, optimizer and RNG state as safetensors plus `state.json`."""
    with atomic_dir(Path(out) / CHECKPOINT_DIR) as tmp:
        weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        opt = optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        for idx, slots in opt["state"].items():
            for key, value in slots.items():
                tensors[f"state.{idx}.{key}"] = torch.as_tensor(value).contiguous().clone()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta = {"train": asdict(state), "param_groups": opt["param_groups"]}
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")


def load_checkpoint(
    out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> TrainState | None:
    """Restore a checkpoint written by `save_checkpoint`; None when there is none."""
    folder = Path(out) / CHECKPOINT_DIR
    if not (folder / "state.json").exists():
        old = folder.with_name(f".{folder.name}.old")  # crashed between the two renames
        if not (old / "state.json").exists():
            return None
        folder = old
    meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        slots.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    train = meta["train"]
    train["history"] = [tuple(h) for h in train["history"]]
    logger.info("resumed from %s at step %d", folder, train["step"])
    return TrainState(**train)


def progress(total: int, initial: int, desc: str) -> tqdm:
    """A tqdm bar that also reads sensibly when redirected to a log file."""
    return tqdm(total=total, initial=initial, desc=desc, mininterval=5.0, dynamic_ncols=True)


def clear_checkpoint(out: Path) -> None:
    """Remove the checkpoint folder once the final weights are published."""
    shutil.rmtree(Path(out) / CHECKPOINT_DIR, ignore_errors=True)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_size(path: Path) -> int:
    """Bytes of all files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_gates(out: Path, record: dict[str, Any]) -> None:
    """Write `gates.json`: metrics, thresholds, pass/fail, parameters, wall time."""
    atomic_write_text(Path(out) / GATES_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


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


def read_gates(path: Path) -> dict[str, Any] | None:
    """The `gates.json` of a model folder, or None."""
    file = Path(path) / GATES_FILE
    if not file.exists():
        return None
    return json.loads(file.read_text(encoding="utf-8"))


def gate_passed(metrics: dict[str, float], thresholds: dict[str, float]) -> bool:
    """Every thresholded metric at or above its threshold."""
    return all(metrics.get(k, float("-inf")) >= v for k, v in thresholds.items())


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
) -> None:
    """Write the model card README.md of a shipped model folder."""
    rows = "\n".join(
        f"| {k} | {v:.4f} | {'≥ ' + format(thresholds[k], 'g') if k in thresholds else '-'} |"
        for k, v in sorted(gates.items())
    )
    cfg = "\n".join(f"- `{k}`: {v}" for k, v in config.items())
    text = f"""# coverworld-tiny `{name}`

{summary}

## Loading (no icg code needed)

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
        return self.before + time.perf_counter() - self.start
