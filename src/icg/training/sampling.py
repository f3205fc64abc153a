"""Stage B's sampling chain: small pure functions both stage-B trainers sample with.

The chain carries gradients through its last K steps when a trainer asks for them (DRaFT-K,
Clark et al. 2024, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards"; ReFL,
Xu et al. 2023); `icg.training.draft` draws K, `icg.training.ranked` samples without gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from icg.models.attention import ICG_TOKENS_KWARG
from icg.models.guidance import combine_branches
from icg.training.conditioning import TextConditioning, as_conditioning
from icg.training.flow import sample_flow


def start_step(num_steps: int, strength: float) -> int:
    """First step run by reference-guided sampling: SDEdit (Meng et al. 2022, Sec. 3) starts from
    the reference noised to ``strength`` of the schedule; counted as diffusers' img2img does."""
    return num_steps - min(int(num_steps * strength), num_steps)


def truncated_steps(num_steps: int, k: int) -> range:
    """Steps that carry gradients in DRaFT-K (Clark et al. 2024, Sec. 3): the last ``k``."""
    if not 1 <= k <= num_steps:
        raise ValueError(f"k: expected 1 <= k <= num_steps={num_steps}, got {k}")
    return range(num_steps - k, num_steps)


def token_drift(tokens: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between ICG tokens and the stage-A model's tokens (a trust region
    in token space, as the KL/L2 anchors of reward fine-tuning; Fan et al. 2023, Sec. 4)."""
    return (tokens - reference.detach()).pow(2).mean()


def guided_eps(
    unet: torch.nn.Module,
    x: torch.Tensor,
    t: torch.Tensor | int,
    text_states: torch.Tensor | TextConditioning,
    tokens: torch.Tensor,
    guidance_scale: float = 1.0,
    uncond_states: torch.Tensor | TextConditioning | None = None,
    user_guidance: float = 1.0,
    tokens_without_user: torch.Tensor | None = None,
    checkpointing: bool = False,
) -> torch.Tensor:
    """The model output one sampling step uses: the personalized branch, mixed with user guidance
    (`icg.models.guidance`) and classifier-free guidance (Ho & Salimans 2022, Eq. 6; the
    unconditional branch gets zero ICG tokens, as `icg.pipeline`), in one batched UNet call.

    Args:
        x: scaled latents ``(B, C, h, w)``.
        t: the step's timestep (a scalar), or one per row ``(B,)``.
        text_states, tokens, guidance_scale, uncond_states, user_guidance, tokens_without_user:
            as `denoise`.
        checkpointing: recompute the UNet activations in backward (when grad is enabled).

    Returns:
        The guided output ``(B, C, h, w)``.
    """
    do_cfg = guidance_scale > 1.0
    if do_cfg and uncond_states is None:
        raise ValueError("uncond_states: required when guidance_scale > 1")
    guide_user = user_guidance != 1.0
    if guide_user and tokens_without_user is None:
        raise ValueError("tokens_without_user: required when user_guidance != 1")

    def unet_eps(
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        tok: torch.Tensor,
        pooled: torch.Tensor | None = None,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        added = TextConditioning(text, pooled, time_ids).unet_kwargs()  # {} for SD1.x
        return unet(x, t, text, cross_attention_kwargs={ICG_TOKENS_KWARG: tok}, **added).sample

    text_states = as_conditioning(text_states)
    branches = [(text_states, tokens.to(unet.dtype))]  # the personalized branch last
    if guide_user:
        branches.insert(0, (text_states, tokens_without_user.to(unet.dtype)))
    if do_cfg:
        branches.insert(0, (as_conditioning(uncond_states), torch.zeros_like(branches[0][1])))
    n = len(branches)
    text = TextConditioning.cat([b[0] for b in branches])  # (n*B, L, C_text)
    tok = torch.cat([b[1] for b in branches])  # (n*B, K', T)
    xs = torch.cat([x] * n)
    if torch.is_tensor(t) and t.ndim == 1:
        t = t.repeat(n)  # (n*B,): each branch's rows at their own timestep
    args = (xs, t, text.states, tok, text.pooled, text.time_ids)
    if checkpointing and torch.is_grad_enabled():
        eps = grad_checkpoint(unet_eps, *args, use_reentrant=False)
    else:
        eps = unet_eps(*args)
    return combine_branches(eps, n, user_guidance, guidance_scale)


def denoise(
    unet: torch.nn.Module,
    scheduler,
    latents: torch.Tensor,
    text_states: torch.Tensor | TextConditioning,
    tokens: torch.Tensor,
    grad_steps: Sequence[int] | range = (),
    guidance_scale: float = 1.0,
    uncond_states: torch.Tensor | TextConditioning | None = None,
    checkpointing: bool = True,
    start: int = 0,
    user_guidance: float = 1.0,
    tokens_without_user: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """Run the sampling chain on latents, with autograd on only for the steps in ``grad_steps``.

    DRaFT-K (Clark et al. 2024, Sec. 3): the reward's gradient flows back through the last K
    denoising steps only; the earlier steps run without a graph.

    Args:
        unet: the base UNet (the ICG adapter installed).
        scheduler: its ``set_timesteps`` has been called.
        latents: initial noise ``(B, C, h, w)`` (already scaled by ``init_noise_sigma``).
        text_states: ``(B, L, C_text)`` title encodings, or a `TextConditioning` (SDXL's
            pooled text and time ids go in as ``added_cond_kwargs``).
        tokens: ICG tokens ``(B, K', T)`` (may carry gradients).
        grad_steps: indices of the denoising steps that carry gradients.
        guidance_scale: CFG weight (> 1 needs ``uncond_states``; the uncond branch gets zero
            ICG tokens, as `icg.pipeline`); a tensor or a `TextConditioning` like ``text_states``.
        checkpointing: recompute the UNet activations in backward (memory for time).
        start: first step of the schedule (reference-guided sampling starts part way, from a
            noised reference latent); step indices count from the start of the full schedule.
        user_guidance: ``w_u`` of `icg.models.guidance` (needs ``tokens_without_user`` when not 1).
        tokens_without_user: the same rows' tokens without a user ``(B, K', T)``.

    Returns:
        Final latents ``(B, C, h, w)``, and the steps whose UNet output required grad.
    """
    grad_steps = set(grad_steps)
    if guidance_scale > 1.0 and uncond_states is None:
        raise ValueError("uncond_states: required when guidance_scale > 1")
    if user_guidance != 1.0 and tokens_without_user is None:
        raise ValueError("tokens_without_user: required when user_guidance != 1")
    used = []
    for i, t in enumerate(scheduler.timesteps[start:], start=start):
        with torch.set_grad_enabled(i in grad_steps and torch.is_grad_enabled()):
            x = scheduler.scale_model_input(latents, t)
            eps = guided_eps(
                unet, x, t, text_states, tokens, guidance_scale, uncond_states,
                user_guidance, tokens_without_user, checkpointing and i in grad_steps,
            )  # fmt: skip
            if eps.requires_grad:
                used.append(i)
            latents = scheduler.step(eps, t, latents).prev_sample
    return latents, used


def decode(vae: torch.nn.Module, latents: torch.Tensor, checkpointing: bool = True) -> torch.Tensor:
    """Images ``(B, 3, H, W)`` in [0, 1] from final latents (checkpointed when they need grad);
    SD3 / FLUX latents are shifted back by the VAE's ``shift_factor``, as their pipelines do."""
    z = latents / vae.config.scaling_factor
    if vae.config.get("shift_factor") is not None:
        z = z + vae.config.shift_factor

    def run(z: torch.Tensor) -> torch.Tensor:
        return vae.decode(z).sample

    if latents.requires_grad and checkpointing:
        images = grad_checkpoint(run, z, use_reentrant=False)
    else:
        images = run(z)
    return (images / 2 + 0.5).clamp(0, 1)


def sample_trajectory(
    unet: torch.nn.Module,
    vae: torch.nn.Module,
    scheduler,
    latents: torch.Tensor,
    text_states: torch.Tensor | TextConditioning,
    tokens: torch.Tensor,
    grad_steps: Sequence[int] | range,
    guidance_scale: float = 1.0,
    uncond_states: torch.Tensor | TextConditioning | None = None,
    checkpointing: bool = True,
    start: int = 0,
    **guidance: Any,
) -> tuple[torch.Tensor, list[int]]:
    """Sample covers: `denoise` then `decode`; returns images ``(B, 3, H, W)`` in [0, 1] and the
    steps whose UNet output required grad. ``guidance``: `denoise`'s user-guidance arguments."""
    latents, used = denoise(
        unet, scheduler, latents, text_states, tokens, grad_steps, guidance_scale,
        uncond_states, checkpointing, start, **guidance,
    )  # fmt: skip
    return decode(vae, latents, checkpointing), used


def denoise_flow(
    transformer: torch.nn.Module,
    scheduler,
    noise: torch.Tensor,
    text: TextConditioning,
    tokens: torch.Tensor,
    num_steps: int,
    grad_steps: range = range(0),
    guidance_scale: float = 1.0,
    uncond: TextConditioning | None = None,
    checkpointing: bool = True,
    **guidance: Any,
) -> tuple[torch.Tensor, list[int]]:
    """`denoise` for SD3 / FLUX transformers: `icg.training.flow.sample_flow` from pure noise
    ``(B, C, h, w)`` with gradients through ``grad_steps`` (the last K, `truncated_steps`).

    Returns:
        Final latents ``(B, C, h, w)``, and the steps that carried gradients.
    """
    if len(grad_steps) and grad_steps[-1] != num_steps - 1:
        raise ValueError(
            f"grad_steps: the flow sampler differentiates the last K steps, got {grad_steps}"
        )
    extra = (
        {} if uncond is None else {"uncond_states": uncond.states, "uncond_pooled": uncond.pooled}
    )
    latents = sample_flow(
        transformer, scheduler, noise, text.states, text.pooled, tokens.to(transformer.dtype),
        num_steps, grad_steps=len(grad_steps), guidance_scale=guidance_scale,
        checkpointing=checkpointing, **extra, **guidance,
    )  # fmt: skip
    return latents, list(grad_steps) if latents.requires_grad else []
