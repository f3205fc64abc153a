"""The stochastic DDIM sampler as a policy: step statistics, log-densities, KL, clipped objective.

With ``eta > 0`` every DDIM step is a Gaussian ``x_{t-1} ~ N(mu_theta(x_t, t), sigma_t^2 I)``
(Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12 and 16), so a sampling chain is
a multi-step decision process with a tractable log-likelihood per step. DDPO (Black et al. 2023,
"Training Diffusion Models with Reinforcement Learning", DDPO_IS) trains it with PPO's clipped
ratio; Flow-GRPO (Liu et al. 2025) and DanceGRPO (Xue et al. 2025) do the same on flow models
with per-group advantages and a KL to the reference model. `icg.training.grpo` is the trainer;
these are its small pure functions, each tested on its own.

Log-densities and the KL are MEANS over the latent's dimensions, not sums, as DDPO's and
Flow-GRPO's implementations take them: the ratio ``exp(log p - log p_old)`` is then a per-
dimension (geometric mean) ratio whose scale does not depend on the latent's size, which is what
their clip ranges (1e-4) are set for.
"""

from __future__ import annotations

import math

import torch


def _per_row(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or ``(B,)`` coefficient shaped ``(B or 1, 1, 1, 1)`` to broadcast over ``like``."""
    value = value.to(like.device, torch.float32)
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def _alphas(scheduler, timestep: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha_bar_t`` and ``alpha_bar_{t-1}`` of DDIM's step from ``timestep`` (scalar or
    ``(B,)``), the previous timestep counted as `diffusers.DDIMScheduler.step` counts it."""
    if scheduler.num_inference_steps is None:
        raise ValueError("scheduler: call set_timesteps before taking DDIM steps")
    t = torch.as_tensor(timestep).long().cpu()
    prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod.float()
    final = torch.as_tensor(scheduler.final_alpha_cumprod).float()
    alpha_prev = torch.where(prev >= 0, alphas[prev.clamp(min=0)], final)
    return alphas[t], alpha_prev


def ddim_step_std(scheduler, timestep: torch.Tensor | int, eta: float) -> torch.Tensor:
    """``sigma_t(eta)`` of the DDIM step from ``timestep`` (Song et al. 2021, Eq. 16):
    ``eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))``; a scalar or ``(B,)``.

    0 where the step is deterministic whatever ``eta``: a last step onto ``a_prev = 1``
    (``set_alpha_to_one``) or from ``t = 0`` (``a_prev = a_t``)."""
    alpha, alpha_prev = _alphas(scheduler, timestep)
    variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
    return eta * variance.clamp(min=0).sqrt()


def ddim_step_stats(
    scheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor | int,
    sample: torch.Tensor,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of DDIM's ``x_{t-1}`` given ``x_t`` (Song et al. 2021, Eq. 12 and 16).

    The same arithmetic as `diffusers.DDIMScheduler.step`: ``step(..., eta, variance_noise=z)``
    returns ``mean + std * z`` (a test holds them together), for epsilon, sample and v
    prediction and ``clip_sample``. Computed in float32.

    Args:
        scheduler: a `diffusers.DDIMScheduler` whose ``set_timesteps`` has been called.
        model_output: the (guided) UNet output ``(B, C, h, w)``.
        timestep: the step's timestep, a scalar or one per row ``(B,)``.
        sample: ``x_t`` ``(B, C, h, w)``.
        eta: the DDIM noise weight (0: deterministic DDIM; 1: DDPM's posterior variance).

    Returns:
        ``mean`` ``(B, C, h, w)`` and ``std`` ``(B or 1, 1, 1, 1)``, both float32.
    """
    if scheduler.config.get("thresholding", False):
        raise ValueError("scheduler.thresholding: dynamic thresholding is not supported here")
    sample, output = sample.float(), model_output.float()
    alpha, alpha_prev = _alphas(scheduler, timestep)
    a_t, a_prev = _per_row(alpha, sample), _per_row(alpha_prev, sample)
    b_t = 1 - a_t
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        x0, eps = (sample - b_t.sqrt() * output) / a_t.sqrt(), output
    elif kind == "sample":
        x0, eps = output, (sample - a_t.sqrt() * output) / b_t.sqrt()
    elif kind == "v_prediction":
        x0, eps = (
            a_t.sqrt() * sample - b_t.sqrt() * output,
            a_t.sqrt() * output + b_t.sqrt() * sample,
        )
    else:
        raise ValueError(
            f"scheduler.prediction_type: expected 'epsilon', 'sample' or 'v_prediction', got {kind!r}"
        )
    if scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        x0 = x0.clamp(-limit, limit)
    std = _per_row(ddim_step_std(scheduler, timestep, eta), sample)
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
    return mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, std^2 I)`` per row ``(B,)``, averaged over the other dimensions (DDPO's
    and Flow-GRPO's convention; the module docstring says why). ``std`` must be > 0."""
    std = std.expand_as(mean)
    log_density = (
        -((x.float() - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    )
    return log_density.flatten(1).mean(dim=1)


def gaussian_step_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, s^2 I) || N(mean_ref, s^2 I))`` per row ``(B,)``, averaged over dimensions:
    ``mean_d (mean - mean_ref)^2 / (2 s^2)``, the closed form Flow-GRPO (Liu et al. 2025) uses
    between the current and the reference step policy at the same ``x_t``."""
    squared = (mean - mean_ref) ** 2 / (2 * std.expand_as(mean) ** 2)
    return squared.flatten(1).mean(dim=1)


def clipped_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss to minimise:
    ``mean(max(-A r, -A clip(r, 1 - e, 1 + e)))`` with ``r = exp(log_prob - old_log_prob)``
    (DDPO_IS, Black et al. 2023).

    Args:
        log_prob: ``(B,)`` the step's log-density under the current policy (with gradient).
        old_log_prob: ``(B,)`` the same under the policy that sampled it.
        advantages: ``(B,)`` the trajectory's advantage.
        clip_range: ``e``.

    Returns:
        The loss, and ``ratio`` (mean), ``clip_fraction`` (rows whose ratio left the range) and
        ``approx_kl`` (``0.5 mean (log r)^2``, DDPO's estimate) to log.
    """
    log_ratio = log_prob - old_log_prob.detach()
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    info = {
        "ratio": float(ratio.detach().mean()),
        "clip_fraction": float(((ratio.detach() - 1).abs() > clip_range).float().mean()),
        "approx_kl": float(0.5 * log_ratio.detach().pow(2).mean()),
    }
    return loss, info
