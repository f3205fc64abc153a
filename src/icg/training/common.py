"""What stage A (`icg.training.align`) and stage B (`icg.training.reward`) share.

Click examples, seeded batching and row dropout, the base model's prompt and image encoders, the
diffusion regression target and (optionally weighted) loss, the user-effect diagnostic, loading
the frozen base pipeline and MLLM, and the optimizer step's guards (non-finite loss or gradients)
and gradient averaging over processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from icg.data.images import load_image
from icg.models.attention import ICG_TOKENS_KWARG
from icg.models.backbones import denoiser_of
from icg.models.base_pipeline import load_base
from icg.models.mllm import load_mllm
from icg.models.paths import resolve_model_path
from icg.training.conditioning import TextConditioning, as_conditioning
from icg.training.conditioning import encode_prompt as encode_prompt  # its old home: re-exported


# ---- the optimizer step ----------------------------------------------------------------------
class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN/inf; training stopped before saving anything."""


def check_finite_loss(loss: torch.Tensor, step: int, hint: str) -> None:
    """Raise `NonFiniteLossError` before ``step + 1`` is taken when the loss is NaN/inf."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss.item()} at step {step + 1}; stopped before saving. "
            f"Lower learning_rate or {hint}; resume from the last checkpoint."
        )


def check_finite_grad_norm(norm: torch.Tensor | float | None, step: int) -> None:
    """Raise `NonFiniteLossError` when the (pre-clipping) gradient norm is NaN/inf."""
    if norm is not None and not math.isfinite(float(norm)):
        raise NonFiniteLossError(
            f"gradient norm is {float(norm)} at step {step + 1}; stopped before saving"
        )


def average_gradients(accelerator, params: list[torch.nn.Parameter]) -> None:
    """Mean of the gradients over processes, in one all-reduce (for any parameter, used inside
    or outside a wrapped module's forward: the MLLM's meta tokens are used outside it)."""
    if accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])  # (P,)
    flat = accelerator.reduce(flat, reduction="mean")
    for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
        p.grad.copy_(g.view_as(p))


def icg_parameter_groups(model, learning_rate: float, refiner_lr: float) -> list[dict]:
    """Optimizer groups of an `ICGModel`: the user refiner at ``refiner_lr``, every other
    trainable part at ``learning_rate`` (order of ``model.trainable_parameters()`` kept)."""
    refiner = list(model.refiner.parameters()) if model.refiner is not None else []
    ids = {id(p) for p in refiner}
    rest = [p for p in model.trainable_parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": learning_rate}]
    if refiner:
        groups.append({"params": refiner, "lr": refiner_lr})
    return groups


# ---- seeded draws ----------------------------------------------------------------------------
def step_generator(seed: int, step: int) -> torch.Generator:
    """The RNG of one optimizer step: a function of ``(seed, step)`` only (exact resume)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of ``step``: epoch-wise permutations seeded by ``(seed, epoch)``."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_examples)
        perm = torch.randperm(
            num_examples, generator=torch.Generator().manual_seed(seed + 7919 * epoch)
        )
        take = min(batch_size - len(out), num_examples - offset)
        out.extend(perm[offset : offset + take].tolist())
    return out


# ---- data ------------------------------------------------------------------------------------
def clicked_impressions(impressions, items, users):
    """The clicked impressions whose item and user are known, in time order (a DataFrame)."""
    clicks = impressions[impressions["clicked"].astype(bool)]
    clicks = clicks[
        clicks["item_id"].isin(items["item_id"]) & clicks["user_id"].isin(users["user_id"])
    ]
    return clicks.sort_values(["timestamp", "event_id"], kind="stable")


def clicked_examples(impressions, items, users) -> tuple[list[str], list[str], list[str]]:
    """``(item_ids, user_ids, covers)`` of the clicked impressions whose item and user are known."""
    clicks = clicked_impressions(impressions, items, users)
    return clicks["item_id"].tolist(), clicks["user_id"].tolist(), clicks["cover"].tolist()


def dropped_rows(generator: torch.Generator, n: int, fraction: float) -> torch.Tensor:
    """``(n,)`` bool, each row ``True`` with probability ``fraction`` (one Bernoulli draw per row
    from ``generator``; nothing is drawn when ``fraction`` is 0, so earlier draws keep their
    stream)."""
    if fraction <= 0:
        return torch.zeros(n, dtype=torch.bool)
    return torch.rand(n, generator=generator) < fraction


def without_users(users: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """``users (B, U)`` with the rows where ``drop (B,)`` is set replaced by NaN (no user: the
    refiner is the identity there, see `icg.models.user_refiner`)."""
    return torch.where(drop.to(users.device)[:, None], float("nan"), users)


@torch.no_grad()
def encode_images(vae, images: Sequence, size: int) -> torch.Tensor:
    """Scaled VAE latents ``(N, C, h, w)`` of images (paths through the safe loader, or PIL),
    resized to ``size``; each distinct entry is encoded once."""

    keys = [id(im) if isinstance(im, Image.Image) else im for im in images]  # PIL is unhashable
    latents = {}
    for key, im in zip(keys, images, strict=True):
        if key in latents:
            continue
        if isinstance(im, Image.Image):
            image = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        else:
            image = load_image(im, size=size)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0)
        x = x.permute(2, 0, 1)[None].to(vae.device, vae.dtype)  # (1, 3, H, W)
        z = vae.encode(x).latent_dist.mode()[0]  # (C, h, w)
        if vae.config.get("shift_factor") is not None:  # SD3 / FLUX VAEs
            z = z - vae.config.shift_factor
        latents[key] = z * vae.config.scaling_factor
    return torch.stack([latents[k] for k in keys])  # (N, C, h, w)


def vae_scale_factor(vae) -> int:
    """Pixels per latent pixel of a diffusers VAE (8 for SD's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_size(base) -> int:
    """The side in pixels the base pipeline draws by default: the denoiser's ``sample_size``
    (the pipeline's ``default_sample_size`` where the denoiser records none, as FLUX) times the
    VAE's scale factor."""
    size = denoiser_of(base).config.get("sample_size") or base.default_sample_size
    return int(size) * vae_scale_factor(base.vae)


# ---- the denoising loss ----------------------------------------------------------------------
def diffusion_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Regression target of the base scheduler: ε (Ho et al. 2020) or v (Salimans & Ho 2022,
    Sec. 4)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    raise ValueError(
        f"scheduler.prediction_type: expected 'epsilon' or 'v_prediction', got {kind!r}"
    )


def denoising_loss(
    unet,
    scheduler,
    latents: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    text_states: torch.Tensor | TextConditioning,
    tokens: torch.Tensor,
    weights: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    uncond_states: torch.Tensor | TextConditioning | None = None,
) -> torch.Tensor:
    """The noise-prediction loss (Ho et al. 2020, Eq. 14) of the UNet with ICG tokens.

    With ``guidance_scale > 1`` the loss is on the classifier-free-guided prediction
    ``u + g (c - u)`` (Ho & Salimans 2022, Eq. 6), the unconditional branch ``u`` (empty prompt,
    zero ICG tokens: the frozen base model) computed without gradient. Targets that were drawn
    with CFG are then learned so that CFG sampling reproduces them, instead of the conditional
    branch learning the guided output and guidance being applied twice at inference.

    Args:
        unet: the base UNet, the ICG adapter installed.
        scheduler: a training scheduler (``add_noise``, ``prediction_type``).
        latents: clean latents ``(B, C, h, w)``; ``noise`` has the same shape.
        t: timesteps ``(B,)``.
        text_states: ``(B, L, C_text)``, or a `TextConditioning` (SDXL: with pooled text and
            time ids, passed as the UNet's ``added_cond_kwargs``).
        tokens: ICG tokens ``(B, K', T)``.
        weights: per-example weights ``(B,)``: the loss is the mean of per-example losses times
            weights (``None``: the plain mean over all elements).
        guidance_scale: CFG weight of the prediction the loss is on (1: the plain prediction).
        uncond_states: the unconditional text ``(B, L, C_text)`` (or `TextConditioning`),
            required when guidance > 1.
    """
    noisy = scheduler.add_noise(latents, noise, t)
    cond = as_conditioning(text_states)
    pred = unet(
        noisy, t, cond.states, cross_attention_kwargs={ICG_TOKENS_KWARG: tokens},
        **cond.unet_kwargs(),
    ).sample  # fmt: skip
    if guidance_scale > 1:
        if uncond_states is None:
            raise ValueError("uncond_states: required when guidance_scale > 1")
        empty = as_conditioning(uncond_states)
        with torch.no_grad():
            zeros = {ICG_TOKENS_KWARG: torch.zeros_like(tokens)}
            uncond = unet(
                noisy, t, empty.states, cross_attention_kwargs=zeros, **empty.unet_kwargs()
            ).sample
        pred = uncond + guidance_scale * (pred - uncond)
    target = diffusion_target(scheduler, latents, noise, t)
    if weights is None:
        return F.mse_loss(pred.float(), target.float())
    per_example = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
    return (per_example * weights.to(per_example)).mean()  # (B,) → ()


@torch.no_grad()
def user_token_effect(model, features: torch.Tensor, users: torch.Tensor) -> float:
    """How much a user changes the ICG tokens: the mean over items and users of
    ``||tokens(item, user) - tokens(item, no user)|| / ||tokens(item, no user)||``.

    0 for an untrained (zero-gate) refiner; a diagnostic of whether the user path learned.

    Args:
        model: an `icg.models.icg_model.ICGModel` (or a wrapper with the same ``forward``).
        features: item features ``(I, K, D)`` from the meta-token encoder.
        users: platform user embeddings ``(U, user_dim)``.
    """
    n_items, n_users = features.shape[0], users.shape[0]
    feats = features.repeat_interleave(n_users, 0)  # (I*U, K, D), item-major
    rows = users.to(features.device).repeat(n_items, 1)  # (I*U, user_dim)
    with_user = model(feats, rows).flatten(1).float()  # (I*U, K'*T)
    without = model(feats, torch.full_like(rows, float("nan"))).flatten(1).float()
    ratio = (with_user - without).norm(dim=1) / without.norm(dim=1).clamp_min(1e-12)  # (I*U,)
    return float(ratio.mean())


# ---- the frozen base -------------------------------------------------------------------------
def load_frozen_base(
    device: torch.device,
    base=None,
    mllm=None,
    processor=None,
    *,
    base_name: str | None,
    mllm_name: str | None,
    source: str,
) -> tuple:
    """The base pipeline and the MLLM, frozen (no grad, eval) and on ``device``: the denoiser,
    the VAE and every text encoder of SD1.x/2.x, SDXL, SD3 or FLUX (`icg.models.backbones`).

    Args:
        device: where the models go.
        base, mllm, processor: already loaded parts (loaded from the names when ``None``).
        base_name, mllm_name: model references (``zoo:NAME``, a path or a hub id).
        source: where the names come from, for the error when one is missing.

    Returns:
        ``(base, mllm, processor)``.
    """

    if base is None:
        if not base_name:
            raise ValueError(f"{source}: records no base model; set base")
        base = load_base(base_name)
    if mllm is None:
        if not mllm_name:
            raise ValueError(f"{source}: records no MLLM; set mllm")
        mllm, processor = load_mllm(resolve_model_path(mllm_name))
    encoders = [getattr(base, f"text_encoder{s}", None) for s in ("", "_2", "_3")]
    for module in (denoiser_of(base), base.vae, *[e for e in encoders if e is not None], mllm):
        module.requires_grad_(False).eval().to(device)
    return base, mllm, processor
