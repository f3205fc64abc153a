"""The `flow` recipe's training phase: rectified flow on the cached latents, EMA, checkpoints."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import SD3Transformer2DModel

import icg.zoo.recipes.flow.data as flow_data  # module attribute: tests swap `batch`
from icg.checkpoints import latest_checkpoint, load_optimizer_state, load_trainer_state
from icg.io import atomic_save_dir
from icg.seeding import seed_everything
from icg.training.flow import flow_noised, flow_target
from icg.zoo.recipes import _base
from icg.zoo.recipes.flow.config import FlowRecipeConfig
from icg.zoo.recipes.flow.models import build_scheduler, build_transformer
from icg.zoo.recipes.sd.state import RecipeState, save_phase
from icg.zoo.recipes.sd.unet import ema_update

logger = logging.getLogger(__name__)


def flow_loss(transformer: Any, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rectified-flow loss of one batch (Esser et al. 2024, Eq. 3 with the logit-normal
    density, no further weighting): MSE between the predicted and the true velocity
    ``eps - x0`` at ``x_t = (1 - sigma) x0 + sigma eps``, the transformer called as
    ``StableDiffusion3Pipeline`` calls it (timestep ``1000 sigma``)."""
    noisy = flow_noised(b["latents"], b["noise"], b["sigmas"])  # (B, C, h, w)
    pred = transformer(
        hidden_states=noisy,
        timestep=b["sigmas"] * 1000,
        encoder_hidden_states=b["text"],
        pooled_projections=b["pooled"],
    ).sample  # (B, C, h, w)
    return torch.nn.functional.mse_loss(pred, flow_target(b["latents"], b["noise"]))


def new_transformer(cfg: FlowRecipeConfig, data: dict[str, torch.Tensor]) -> Any:
    """A fresh transformer sized to the cached latents and text encodings."""
    _, channels, size, _ = data["latents"].shape
    return build_transformer(
        cfg, channels, size, data["states"].shape[-1], data["pooled"].shape[-1]
    )


def train_transformer(
    work: Path, cfg: FlowRecipeConfig, state: RecipeState, seed: int, data: dict[str, torch.Tensor]
) -> Any:
    """Train the transformer on the cached data; returns the EMA transformer.

    Checkpoints every ``checkpoint_every`` steps into ``work/transformer_ckpt`` (weights, EMA,
    optimizer, RNG, history); a run resumed from one ends bit-identical to an uninterrupted
    run, since every draw of step ``s`` comes from ``(seed, s)`` (`data.batch`).
    """
    final = work / "transformer"
    if final.exists() and state.get("transformer_done"):
        logger.info("flow: transformer done already (%s)", final)
        return SD3Transformer2DModel.from_pretrained(str(final))
    scheduler = build_scheduler(cfg)
    ckpt = latest_checkpoint(work / "transformer_ckpt")
    seed_everything(seed)
    if ckpt is None:
        model = new_transformer(cfg, data)
        ema = copy.deepcopy(model)
        start, wall, history = 0, 0.0, []
    else:
        model = SD3Transformer2DModel.from_pretrained(str(ckpt / "transformer"))
        ema = SD3Transformer2DModel.from_pretrained(str(ckpt / "ema"))
        progress = load_trainer_state(ckpt)
        start, wall, history = progress["step"], progress["wall_s"], progress["history"]
        logger.info("flow: resuming from %s (step %d)", ckpt, start)
    model.train()
    ema.eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if ckpt is not None:
        load_optimizer_state(ckpt, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _base.cosine_lr(s, cfg.steps, 1.0, cfg.warmup, floor=0.1)
    )
    for _ in range(start):
        sched.step()
    joint_dim = model.config.joint_attention_dim
    n_params = _base.count_parameters(model)
    logger.info("flow: %.2fM params, steps %d..%d", n_params / 1e6, start, cfg.steps)
    t0 = time.time() - wall
    bar = _base.progress(cfg.steps, start, "flow")
    running = None
    for step in range(start, cfg.steps):
        b = flow_data.batch(step, seed, data, cfg, scheduler, joint_dim)
        loss = flow_loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, model, step, cfg.ema_decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        done = step + 1
        if done % 50 == 0 or done == cfg.steps:
            history.append((done, running))
            logger.info("flow step %d: loss %.4f", done, running)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            elapsed = time.time() - t0
            save_phase(
                work / "transformer_ckpt", done, opt, elapsed, history, transformer=model, ema=ema
            )
    bar.close()
    wall = time.time() - t0
    atomic_save_dir(final, ema.save_pretrained)
    state.update(
        transformer_done=True,
        transformer_wall_s=wall,
        transformer_params=n_params,
        transformer_history=history,
    )
    logger.info("flow: transformer done in %.0f s", wall)
    return ema
