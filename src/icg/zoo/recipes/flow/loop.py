"""The `flow` recipe's training phase: rectified flow on the cached latents (`train_denoiser`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import SD3Transformer2DModel

import icg.zoo.recipes.flow.data as flow_data  # module attribute: tests swap `batch`
from icg.training.flow import flow_noised, flow_target
from icg.zoo.recipes.flow.config import FlowRecipeConfig
from icg.zoo.recipes.flow.models import build_scheduler, build_transformer
from icg.zoo.recipes.sd.denoiser_phase import Optimisation, train_denoiser
from icg.zoo.recipes.sd.state import RecipeState


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
    scheduler = build_scheduler(cfg)
    joint_dim = 2 * data["states"].shape[-1]  # the two CLIP slots (`models.build_transformer`)
    optimisation = Optimisation(
        steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        warmup=cfg.warmup,
        weight_decay=cfg.weight_decay,
        ema_decay=cfg.ema_decay,
        checkpoint_every=cfg.checkpoint_every,
    )
    return train_denoiser(
        work,
        "transformer",
        state,
        seed,
        optimisation,
        model_class=SD3Transformer2DModel,
        build=lambda: new_transformer(cfg, data),
        batch=lambda step: flow_data.batch(step, seed, data, cfg, scheduler, joint_dim),
        loss_fn=flow_loss,
    )
