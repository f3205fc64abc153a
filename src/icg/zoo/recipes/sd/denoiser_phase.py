"""The denoiser training phase every base recipe shares (`sd`'s UNet, `flow`'s transformer).

setup (fresh model or the newest checkpoint) -> steps (batch of the step, loss, AdamW with
gradient clipping, cosine learning rate, weight EMA) -> checkpoints -> the EMA model saved as
``<work>/<name>``. Every draw of step ``s`` comes from the recipe's ``batch(s)`` (a pure
function of the seed and the step), so a resumed run ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from icg.checkpoints import latest_checkpoint, load_optimizer_state, load_trainer_state
from icg.io import atomic_save_dir
from icg.seeding import seed_everything
from icg.zoo.recipes._base import cosine_lr
from icg.zoo.recipes.sd.state import RecipeState, save_phase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Optimisation:
    """How a denoiser phase optimises.

    Args:
        steps: optimisation steps.
        learning_rate: peak AdamW learning rate (linear warm-up, cosine decay to 10%).
        warmup: warm-up steps.
        weight_decay: AdamW weight decay.
        ema_decay: largest decay of the weight EMA (`ema_update`), the model that is saved.
        checkpoint_every: steps between checkpoints.
    """

    steps: int
    learning_rate: float
    warmup: int
    weight_decay: float
    ema_decay: float
    checkpoint_every: int


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """Exponential moving average with warm-up decay min(max_decay, (1 + step) / (10 + step))."""
    decay = min(max_decay, (1.0 + step) / (10.0 + step))
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, 1.0 - decay)


def train_denoiser(
    work: Path,
    name: str,
    state: RecipeState,
    seed: int,
    opt_cfg: Optimisation,
    *,
    model_class: Any,
    build: Callable[[], torch.nn.Module],
    batch: Callable[[int], dict[str, torch.Tensor]],
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
) -> Any:
    """Train the denoiser `name` (checkpoints in ``work/<name>_ckpt``); returns the EMA model.

    Args:
        model_class: the diffusers class whose ``from_pretrained`` reads a checkpoint's model.
        build: a fresh model (called after `seed_everything`, so its initialisation is seeded).
        batch: the batch of step ``s``.
        loss_fn: the scalar loss of the model on a batch.

    The state file records ``<name>_done``, ``<name>_wall_s``, ``<name>_params`` and
    ``<name>_history`` ((step, smoothed loss) every 50 steps).
    """
    final = work / name
    if final.exists() and state.get(f"{name}_done"):
        logger.info("%s: done already (%s)", name, final)
        return model_class.from_pretrained(str(final))
    ckpt = latest_checkpoint(work / f"{name}_ckpt")
    seed_everything(seed)
    if ckpt is None:
        model = build()
        ema = copy.deepcopy(model)
        start, wall, history = 0, 0.0, []
    else:
        model = model_class.from_pretrained(str(ckpt / name))
        ema = model_class.from_pretrained(str(ckpt / "ema"))
        progress = load_trainer_state(ckpt)
        start, wall, history = progress["step"], progress["wall_s"], progress["history"]
        logger.info("%s: resuming from %s (step %d)", name, ckpt, start)
    model.train()
    ema.eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        model.parameters(), lr=opt_cfg.learning_rate, weight_decay=opt_cfg.weight_decay
    )
    if ckpt is not None:
        load_optimizer_state(ckpt, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, opt_cfg.steps, 1.0, opt_cfg.warmup, floor=0.1)
    )
    for _ in range(start):
        sched.step()
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("%s: %.2fM params, steps %d..%d", name, n_params / 1e6, start, opt_cfg.steps)
    t0 = time.time() - wall
    bar = tqdm(
        range(start, opt_cfg.steps),
        desc=name,
        mininterval=20,
        initial=start,
        total=opt_cfg.steps,
    )
    running = None
    for step in bar:
        b = batch(step)
        loss = loss_fn(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, model, step, opt_cfg.ema_decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
        done = step + 1
        if done % 50 == 0:
            history.append((done, running))
            logger.info("%s step %d: loss %.4f", name, done, running)
        if done % opt_cfg.checkpoint_every == 0 or done == opt_cfg.steps:
            models = {name: model, "ema": ema}
            save_phase(work / f"{name}_ckpt", done, opt, time.time() - t0, history, **models)
    wall = time.time() - t0
    atomic_save_dir(final, ema.save_pretrained)
    state.update(
        **{
            f"{name}_done": True,
            f"{name}_wall_s": wall,
            f"{name}_params": n_params,
            f"{name}_history": history,
        }
    )
    logger.info("%s: done in %.0f s", name, wall)
    return ema
