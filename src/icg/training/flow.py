"""The flow-matching loss of a joint-attention transformer (SD3, FLUX) with ICG tokens.

Rectified flow (Esser et al. 2024, "Scaling Rectified Flow Transformers", Sec. 2, Eq. 1-3):
a clean latent ``x0`` and noise ``eps`` are mixed as ``x_t = (1 - sigma) x0 + sigma eps`` and the
transformer predicts the velocity ``v = eps - x0``; timesteps are drawn from the logit-normal
density (Sec. 3.1, Eq. 19), as diffusers' ``compute_density_for_timestep_sampling`` does, and
mapped through the scheduler's own sigma table (its shift), as diffusers' SD3 / FLUX training
scripts do. Stage A trains SD3 / FLUX with `flow_matching_loss` (`icg.training.objective`);
stage B samples with `sample_flow` (DRaFT-K through its last K steps).

Every function here is pure except for the transformer call; randomness comes from the caller's
generator so a step is reproducible from ``(seed, step)``.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from icg.models.attention import ICG_TOKENS_KWARG
from icg.models.guidance import combine_branches


def logit_normal_sigmas(
    batch: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """``sigma = sigmoid(n)``, ``n ~ N(mean, std)``: SD3's timestep density (Esser et al. 2024,
    Sec. 3.1, Eq. 19; ``mean 0, std 1`` is their best setting). Returns ``(batch,)`` in (0, 1)."""
    return torch.sigmoid(torch.randn(batch, generator=generator) * std + mean)


def scheduler_sigmas(scheduler, u: torch.Tensor) -> torch.Tensor:
    """Training sigmas ``(B,)`` for draws ``u`` in (0, 1): ``u`` picks an entry of the sigma table
    of a freshly built ``FlowMatchEulerDiscreteScheduler`` (``set_timesteps`` never called), as
    diffusers' ``train_dreambooth_sd3.py`` / ``_flux.py`` index ``timesteps[(u * N).long()]``. The
    table carries the scheduler's static shift (SD3: 3.0); FLUX's is dynamic, applied only at
    inference, so its table is unshifted."""
    n = scheduler.config.num_train_timesteps
    if len(scheduler.sigmas) != n:
        raise ValueError(
            f"scheduler: expected a fresh flow scheduler with {n} training sigmas, got "
            f"{len(scheduler.sigmas)} (set_timesteps was called on it)"
        )
    index = (u * n).long().clamp(0, n - 1)
    return scheduler.sigmas[index].to(u.dtype)


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


def is_flux(transformer: nn.Module) -> bool:
    """Whether ``transformer`` is FLUX's (packed latents, position ids, distilled guidance)."""
    return type(transformer).__name__ == "FluxTransformer2DModel"


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
    if not is_flux(transformer):
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
    weights: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    uncond_states: torch.Tensor | None = None,
    uncond_pooled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between the predicted and the true velocity (Esser et al. 2024, Eq. 3)
    at ``x_t``, the adapter installed on ``transformer``.

    With ``guidance_scale > 1`` the loss is on the classifier-free-guided velocity
    ``u + g (c - u)`` (Ho & Salimans 2022, Eq. 6; ``u``: the unconditional text with zero ICG
    tokens, without gradient), as `icg.training.common.denoising_loss` does for UNets.

    Args:
        latents: clean latents ``(B, C, h, w)`` (already shifted and scaled for the VAE).
        noise: ``(B, C, h, w)``.
        sigmas: ``(B,)`` in (0, 1), e.g. `scheduler_sigmas` of `logit_normal_sigmas`.
        text_states: ``(B, L, joint_attention_dim)``; pooled: ``(B, pooled_projection_dim)``.
        tokens: ICG tokens ``(B, K', T)``.
        weights: per-example weights ``(B,)`` (``None``: the plain mean over all elements).
        guidance_scale, uncond_states, uncond_pooled: CFG of the prediction the loss is on.
    """
    noisy = flow_noised(latents, noise, sigmas)
    t = sigmas * 1000
    pred = predict_velocity(transformer, noisy, t, text_states, pooled, tokens)
    if guidance_scale > 1:
        if uncond_states is None or uncond_pooled is None:
            raise ValueError("uncond_states, uncond_pooled: required when guidance_scale > 1")
        with torch.no_grad():
            zeros = torch.zeros_like(tokens)
            uncond = predict_velocity(transformer, noisy, t, uncond_states, uncond_pooled, zeros)
        pred = uncond + guidance_scale * (pred - uncond)
    target = flow_target(latents, noise)
    if weights is None:
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    per_example = (pred.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    return (per_example * weights.to(per_example)).mean()


def set_flow_timesteps(
    scheduler, transformer: nn.Module, num_steps: int, latent_hw: tuple[int, int], device=None
) -> None:
    """Set the schedule the stock pipeline draws with. SD3 (``StableDiffusion3Pipeline``): the
    scheduler's own, with the resolution-dependent shift ``mu`` when it uses dynamic shifting.
    FLUX (``FluxPipeline``): sigmas ``linspace(1, 1/n, n)`` and ``mu`` from the packed sequence
    length (Esser et al. 2024, Sec. 5.3.2, resolution-dependent shifting)."""
    h, w = latent_hw
    cfg = scheduler.config
    if is_flux(transformer):
        seq, max_shift = (h // 2) * (w // 2), 1.15
        sigmas = None if cfg.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_steps, num_steps)
    else:
        patch = transformer.config.patch_size
        seq, max_shift, sigmas = (h // patch) * (w // patch), 1.16, None
    kwargs = {}
    if is_flux(transformer) or cfg.get("use_dynamic_shifting"):
        kwargs["mu"] = calculate_shift(
            seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5), cfg.get("max_shift", max_shift),
        )  # fmt: skip
    if sigmas is None:
        scheduler.set_timesteps(num_steps, device=device, **kwargs)
    else:
        scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
    scheduler.set_begin_index(0)


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
    checkpointing: bool = False,
    user_guidance: float = 1.0,
    tokens_without_user: torch.Tensor | None = None,
) -> torch.Tensor:
    """Euler integration of the flow ODE with ICG tokens, as the stock pipelines run it
    (``FlowMatchEulerDiscreteScheduler``, `set_flow_timesteps`). SD3: CFG on ``[uncond, cond]``
    halves with zero ICG tokens in the unconditional half, as ``StableDiffusion3Pipeline``;
    FLUX.1: one batch, ``guidance_scale`` in its guidance embedding, as ``FluxPipeline``. The
    last ``grad_steps`` steps carry gradients, the earlier ones run without (DRaFT-K, Clark et
    al. 2024, Sec. 3), so stage B can differentiate a reward of the returned latents
    ``(B, C, h, w)`` through them.

    Args:
        noise: the starting latents ``(B, C, h, w)`` (pure noise at sigma 1).
        text_states, pooled: the prompt's states ``(B, L, D)`` and pooled embedding ``(B, P)``.
        tokens: ICG tokens ``(B, K', T)``.
        grad_steps: ``K``, between 0 and ``num_steps``.
        guidance_scale: CFG weight (SD3 above 1 needs ``uncond_states`` and ``uncond_pooled``).
        checkpointing: recompute the transformer's activations of the grad steps in backward.
        user_guidance: ``w_u`` of `icg.models.guidance` (needs ``tokens_without_user``, the same
            rows' tokens without a user, when not 1).
    """
    if not 0 <= grad_steps <= num_steps:
        raise ValueError(f"grad_steps: expected 0..{num_steps}, got {grad_steps}")
    flux = is_flux(transformer)
    cfg = guidance_scale > 1 and not flux
    guide_user = user_guidance != 1.0
    if guide_user and tokens_without_user is None:
        raise ValueError("tokens_without_user: required when user_guidance != 1")
    branches = [(text_states, pooled, tokens)]  # the personalized branch last
    if guide_user:
        branches.insert(0, (text_states, pooled, tokens_without_user))
    if cfg:
        if uncond_states is None or uncond_pooled is None:
            raise ValueError("uncond_states, uncond_pooled: required when guidance_scale > 1")
        branches.insert(0, (uncond_states, uncond_pooled, torch.zeros_like(tokens)))
    n = len(branches)
    states = torch.cat([b[0] for b in branches])  # (n*B, L, D)
    pooled = torch.cat([b[1] for b in branches])  # (n*B, P)
    tokens = torch.cat([b[2] for b in branches])  # (n*B, K', T)
    guidance = guidance_scale if flux else None
    set_flow_timesteps(scheduler, transformer, num_steps, noise.shape[-2:], noise.device)
    latents = noise
    for i, t in enumerate(scheduler.timesteps):
        grad = i >= num_steps - grad_steps and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            x = torch.cat([latents] * n) if n > 1 else latents
            args = (transformer, x, t.expand(x.shape[0]), states, pooled, tokens, guidance)
            if grad and checkpointing:
                v = grad_checkpoint(predict_velocity, *args, use_reentrant=False)
            else:
                v = predict_velocity(*args)
            v = combine_branches(v, n, user_guidance, guidance_scale if cfg else 1.0)
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents
