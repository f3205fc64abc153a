"""The training objective of a base model's family: what stage A (and stage B's anchors) regress.

- UNets (SD1.x/2.x, SDXL): noise (or v) prediction at uniformly drawn DDPM timesteps (Ho et al.
  2020, Eq. 14), `icg.training.common.denoising_loss`.
- Flow-matching transformers (SD3, FLUX): the rectified-flow velocity at logit-normal sigmas
  mapped through the scheduler's table (Esser et al. 2024, Sec. 2-3), `icg.training.flow`.

Both are called the same way, ``objective.timesteps(n, generator)`` then
``objective.loss(latents, noise, t, conditioning, tokens, ...)``, so a recipe has one code path.
The draws come from the caller's generator (exact resume from ``(seed, step)``).
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from torch import nn

from icg.models.backbones import denoiser_of
from icg.training.common import denoising_loss
from icg.training.conditioning import FLOW_FAMILIES, TextConditioning, base_family
from icg.training.flow import flow_matching_loss, logit_normal_sigmas, scheduler_sigmas


class NoiseObjective:
    """Noise/v prediction of a UNet (`denoising_loss`) with a ``DDPMScheduler`` built from the
    base scheduler's config."""

    def __init__(self, denoiser: nn.Module, scheduler_config) -> None:
        self.denoiser = denoiser
        self.scheduler = DDPMScheduler.from_config(scheduler_config)

    def timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n,)`` integer timesteps, uniform over the training schedule."""
        high = self.scheduler.config.num_train_timesteps
        return torch.randint(0, high, (n,), generator=generator)

    def loss(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        text: TextConditioning,
        tokens: torch.Tensor,
        weights: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        uncond: TextConditioning | None = None,
    ) -> torch.Tensor:
        """`denoising_loss` at timesteps ``t`` ``(B,)`` (see there for the arguments)."""
        return denoising_loss(
            self.denoiser, self.scheduler, latents, noise, t.to(latents.device), text,
            tokens.to(self.denoiser.dtype), weights, guidance_scale, uncond,
        )  # fmt: skip


class FlowObjective:
    """Flow matching of an SD3 / FLUX transformer (`flow_matching_loss`); ``t`` are sigmas.

    Args:
        denoiser: the transformer (the ICG adapter installed).
        scheduler_config: the base pipeline's ``FlowMatchEulerDiscreteScheduler`` config.
        logit_mean, logit_std: the logit-normal density of the draws (SD3's best: 0, 1).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        scheduler_config,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> None:
        self.denoiser = denoiser
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
        self.logit_mean, self.logit_std = logit_mean, logit_std

    def timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n,)`` sigmas in (0, 1): logit-normal draws through the scheduler's sigma table."""
        u = logit_normal_sigmas(n, generator, self.logit_mean, self.logit_std)
        return scheduler_sigmas(self.scheduler, u)

    def loss(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        t: torch.Tensor,
        text: TextConditioning,
        tokens: torch.Tensor,
        weights: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        uncond: TextConditioning | None = None,
    ) -> torch.Tensor:
        """`flow_matching_loss` at sigmas ``t`` ``(B,)``."""
        extra = {}
        if uncond is not None:
            extra = {"uncond_states": uncond.states, "uncond_pooled": uncond.pooled}
        return flow_matching_loss(
            self.denoiser, latents, noise, t.to(latents.device), text.states, text.pooled,
            tokens.to(self.denoiser.dtype), weights, guidance_scale, **extra,
        )  # fmt: skip


def training_objective(base) -> NoiseObjective | FlowObjective:
    """The objective of the base pipeline's family (module doc), on its denoiser."""
    denoiser = denoiser_of(base)
    if base_family(base) in FLOW_FAMILIES:
        return FlowObjective(denoiser, base.scheduler.config)
    return NoiseObjective(denoiser, base.scheduler.config)
