"""The flow-matching loss of a joint-attention transformer (SD3, FLUX) with ICG tokens.

Rectified flow (Esser et al. 2024, "Scaling Rectified Flow Transformers", Sec. 2, Eq. 1-3):
a clean latent ``x0`` and noise ``eps`` are mixed as ``x_t = (1 - sigma) x0 + sigma eps`` and the
transformer predicts the velocity ``v = eps - x0``; timesteps are drawn from the logit-normal
density (Sec. 3.1, Eq. 19), as diffusers' ``compute_density_for_timestep_sampling`` does. This is
the stage-A objective on flow models; `icg.training.align` does not call it yet (it trains UNets).

Every function here is pure except for the transformer call; randomness comes from the caller's
generator so a step is reproducible from ``(seed, step)``.
"""

from __future__ import annotations

import torch
from torch import nn

from icg.models.attention import ICG_TOKENS_KWARG


def logit_normal_sigmas(
    batch: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """``sigma = sigmoid(n)``, ``n ~ N(mean, std)``: SD3's timestep density (Esser et al. 2024,
    Sec. 3.1, Eq. 19; ``mean 0, std 1`` is their best setting). Returns ``(batch,)`` in (0, 1)."""
    return torch.sigmoid(torch.randn(batch, generator=generator) * std + mean)


def flow_noised(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - sigma) x0 + sigma eps`` (Esser et al. 2024, Eq. 3), sigmas ``(B,)``."""
    s = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)  # (B, 1, 1, 1)
    return (1 - s) * latents + s * noise


def flow_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity ``eps - x0`` a rectified-flow model predicts (Esser et al. 2024, Eq. 3)."""
    return noise - latents


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """FLUX's 2×2 patch packing: ``(B, C, h, w)`` → ``(B, h/2 · w/2, 4C)`` (as ``FluxPipeline``)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack_latents`: ``(B, h/2 · w/2, 4C)`` → ``(B, C, h, w)``."""
    b, _, c4 = packed.shape
    x = packed.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(
        0, 3, 1, 4, 2, 5
    )  # (B, C, h/2, 2, w/2, 2)
    return x.reshape(b, c4 // 4, h, w)


def flux_image_ids(h: int, w: int, device=None) -> torch.Tensor:
    """FLUX's position ids of the packed latent grid ``(h/2 · w/2, 3)``: ``(0, row, col)``."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device)
    ids[..., 1] = torch.arange(h // 2, device=device)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=device)[None, :]
    return ids.reshape(-1, 3)


def predict_velocity(
    transformer: nn.Module,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    text_states: torch.Tensor,
    pooled: torch.Tensor,
    tokens: torch.Tensor,
    guidance: float | None = None,
) -> torch.Tensor:
    """The transformer's velocity for latents ``(B, C, h, w)`` with ICG tokens ``(B, K', T)``.

    ``timesteps`` ``(B,)`` are on the scheduler's scale (``1000 sigma``). SD3 reads the latent
    grid and the timesteps as they are; FLUX reads packed latents, position ids and
    ``timesteps / 1000`` (it scales by 1000 itself), and ``guidance`` when distilled, exactly as
    ``StableDiffusion3Pipeline`` / ``FluxPipeline`` call them.
    """
    kwargs = {"joint_attention_kwargs": {ICG_TOKENS_KWARG: tokens}}
    if type(transformer).__name__ != "FluxTransformer2DModel":
        return transformer(
            hidden_states=noisy,
            timestep=timesteps,
            encoder_hidden_states=text_states,
            pooled_projections=pooled,
            **kwargs,
        ).sample
    h, w = noisy.shape[-2:]
    extra = {}
    if transformer.config.guidance_embeds:
        extra["guidance"] = torch.full_like(timesteps, 3.5 if guidance is None else guidance)
    out = transformer(
        hidden_states=pack_latents(noisy),
        timestep=timesteps / 1000,
        encoder_hidden_states=text_states,
        pooled_projections=pooled,
        img_ids=flux_image_ids(h, w, noisy.device),
        txt_ids=torch.zeros(text_states.shape[1], 3, device=noisy.device),
        **extra,
        **kwargs,
    ).sample  # (B, h/2 · w/2, 4C)
    return unpack_latents(out, h, w)


def flow_matching_loss(
    transformer: nn.Module,
    latents: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    text_states: torch.Tensor,
    pooled: torch.Tensor,
    tokens: torch.Tensor,
) -> torch.Tensor:
    """Mean squared error between the predicted and the true velocity (Esser et al. 2024, Eq. 3)
    at ``x_t``, the adapter installed on ``transformer``.

    Args:
        latents: clean latents ``(B, C, h, w)`` (already shifted and scaled for the VAE).
        noise: ``(B, C, h, w)``.
        sigmas: ``(B,)`` in (0, 1), e.g. `logit_normal_sigmas`.
        text_states: ``(B, L, joint_attention_dim)``; pooled: ``(B, pooled_projection_dim)``.
        tokens: ICG tokens ``(B, K', T)``.
    """
    noisy = flow_noised(latents, noise, sigmas)
    pred = predict_velocity(transformer, noisy, sigmas * 1000, text_states, pooled, tokens)
    return torch.nn.functional.mse_loss(pred.float(), flow_target(latents, noise).float())


def sample_flow(
    transformer: nn.Module,
    scheduler,
    noise: torch.Tensor,
    text_states: torch.Tensor,
    pooled: torch.Tensor,
    tokens: torch.Tensor,
    num_steps: int,
    *,
    grad_steps: int = 0,
    guidance_scale: float = 1.0,
    uncond_states: torch.Tensor | None = None,
    uncond_pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler integration of the flow ODE with ICG tokens, as ``StableDiffusion3Pipeline`` runs it
    (``FlowMatchEulerDiscreteScheduler``; CFG on ``[uncond, cond]`` halves with zero ICG tokens
    in the unconditional half). The last ``grad_steps`` steps carry gradients, the earlier ones
    run without (DRaFT-K, Clark et al. 2024, Sec. 3), so stage B can differentiate a reward of
    the returned latents ``(B, C, h, w)`` through them.

    Args:
        noise: the starting latents ``(B, C, h, w)`` (pure noise at sigma 1).
        text_states, pooled: the prompt's states ``(B, L, D)`` and pooled embedding ``(B, P)``.
        tokens: ICG tokens ``(B, K', T)``.
        grad_steps: ``K``, between 0 and ``num_steps``.
        guidance_scale: CFG weight (above 1 needs ``uncond_states`` and ``uncond_pooled``).
    """
    if not 0 <= grad_steps <= num_steps:
        raise ValueError(f"grad_steps: expected 0..{num_steps}, got {grad_steps}")
    cfg = guidance_scale > 1
    if cfg:
        if uncond_states is None or uncond_pooled is None:
            raise ValueError("uncond_states, uncond_pooled: required when guidance_scale > 1")
        text_states = torch.cat([uncond_states, text_states])  # (2B, L, D)
        pooled = torch.cat([uncond_pooled, pooled])
        tokens = torch.cat([torch.zeros_like(tokens), tokens])  # (2B, K', T)
    scheduler.set_timesteps(num_steps, device=noise.device)
    latents = noise
    for i, t in enumerate(scheduler.timesteps):
        with torch.set_grad_enabled(i >= num_steps - grad_steps):
            x = torch.cat([latents] * 2) if cfg else latents
            v = predict_velocity(transformer, x, t.expand(x.shape[0]), text_states, pooled, tokens)
            if cfg:
                uncond, cond = v.chunk(2)
                v = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents
