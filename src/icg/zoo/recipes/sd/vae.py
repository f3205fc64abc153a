"""Phases 1 and 4 of the `sd` recipe: train the AutoencoderKL, later fine-tune its decoder."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from icg.checkpoints import latest_checkpoint, load_optimizer_state, load_trainer_state
from icg.io import atomic_save_dir
from icg.seeding import seed_everything
from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.zoo.recipes._base import cosine_lr
from icg.zoo.recipes.sd.config import DECODER_DATA_OFFSET, VAE_DATA_OFFSET, SDRecipeConfig
from icg.zoo.recipes.sd.models import build_vae
from icg.zoo.recipes.sd.pixels import (
    chroma_l1,
    edge_l1,
    heldout_renders,
    to_model_range,
    vae_psnr,
)
from icg.zoo.recipes.sd.state import RecipeState, save_phase

logger = logging.getLogger(__name__)


def random_crops(images: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """One random `crop` x `crop` window per image of uint8 (N, H, W, 3)."""
    n, h, w, _ = images.shape
    ys = rng.integers(0, h - crop + 1, n)
    xs = rng.integers(0, w - crop + 1, n)
    return np.stack(
        [im[y : y + crop, x : x + crop] for im, y, x in zip(images, ys, xs, strict=True)]
    )


def vae_batch(step: int, cfg: SDRecipeConfig) -> np.ndarray:
    """The uint8 training images of VAE step `step`: a pure function of the step."""

    seed = zoo_seed(VAE_DATA_OFFSET + step)
    if step >= cfg.vae_steps - cfg.vae_full_steps:
        return sample_covers(cfg.vae_full_batch, seed, size=cfg.image_size).images
    images = sample_covers(cfg.vae_batch, seed, size=cfg.image_size).images
    return random_crops(images, cfg.vae_crop, np.random.default_rng(seed))


def reconstruction_loss(
    rec: torch.Tensor, x: torch.Tensor, cfg: SDRecipeConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, l1, l2)``: L1 + L2 + edge L1 (+ chroma L1 when weighted) of ``rec`` against ``x``,
    both (N, 3, H, W) in [-1, 1]; the VAE and the decoder fine-tuning share it."""
    l1 = (rec - x).abs().mean()
    l2 = F.mse_loss(rec, x)
    loss = l1 + l2 + cfg.vae_edge_weight * edge_l1(rec, x)
    if cfg.vae_chroma_weight > 0:
        loss = loss + cfg.vae_chroma_weight * chroma_l1(rec, x)
    return loss, l1, l2


def vae_loss(
    vae: Any, x: torch.Tensor, cfg: SDRecipeConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """`reconstruction_loss` plus a small KL of one batch x (N, 3, H, W) in [-1, 1]."""
    posterior = vae.encode(x).latent_dist
    z = posterior.sample()  # (N, 4, H/4, W/4)
    rec = vae.decode(z).sample  # (N, 3, H, W)
    loss, l1, l2 = reconstruction_loss(rec, x, cfg)
    kl = posterior.kl().mean()  # summed over latent elements, mean over the batch
    loss = loss + cfg.vae_kl_weight * kl
    psnr_db = 10.0 * math.log10(4.0 / max(l2.item(), 1e-12))  # [-1, 1] range -> peak 2
    return loss, {"loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "psnr": psnr_db}


def train_vae(work: Path, cfg: SDRecipeConfig, state: RecipeState, seed: int) -> Any:
    """Phase 1: train the AutoencoderKL and set its scaling_factor; returns the final VAE."""

    final = work / "vae"
    if final.exists() and state.get("vae_done"):
        logger.info("vae: done already (%s)", final)
        return AutoencoderKL.from_pretrained(final)

    ckpt_dir = work / "vae_ckpt"
    ckpt = latest_checkpoint(ckpt_dir)
    seed_everything(seed)
    if ckpt is None:
        vae = build_vae(cfg)
        start, wall, history = 0, 0.0, []
    else:
        vae = AutoencoderKL.from_pretrained(ckpt / "vae")
        progress = load_trainer_state(ckpt)
        start, wall, history = progress["step"], progress["wall_s"], progress["history"]
        logger.info("vae: resuming from %s (step %d)", ckpt, start)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_learning_rate, weight_decay=0.0)
    if ckpt is not None:
        load_optimizer_state(ckpt, opt)  # and the torch RNG: posterior samples continue
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, cfg.vae_steps, 1.0, 50, floor=0.05)
    )
    for _ in range(start):
        sched.step()
    n_params = sum(p.numel() for p in vae.parameters())
    logger.info("vae: %.2fM params, steps %d..%d", n_params / 1e6, start, cfg.vae_steps)

    val = heldout_renders(256)
    t0 = time.time() - wall
    bar = tqdm(
        range(start, cfg.vae_steps), desc="vae", mininterval=20, initial=start, total=cfg.vae_steps
    )
    for step in bar:
        loss, info = vae_loss(vae, to_model_range(vae_batch(step, cfg)), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(
            loss=f"{info['loss']:.4f}", psnr=f"{info['psnr']:.1f}", kl=f"{info['kl']:.0f}"
        )
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.vae_steps:
            vae.eval()
            val_psnr = vae_psnr(vae, val)
            vae.train()
            history.append({"step": done, "val_psnr": val_psnr, **info})
            logger.info("vae step %d: %s val_psnr=%.2f dB", done, info, val_psnr)
        if done % cfg.checkpoint_every == 0 or done == cfg.vae_steps:
            save_phase(ckpt_dir, done, opt, time.time() - t0, history, vae=vae)
    wall = time.time() - t0

    vae.eval()
    mean, std = latent_channel_stats(vae, cfg)
    standardize_latents(vae, mean, std)
    scale = latent_scaling_factor(vae, cfg)  # ~1 after standardising: a check
    fresh = heldout_renders(512, chunk=1)
    fresh_psnr = vae_psnr(vae, fresh)
    atomic_save_dir(final, vae.save_pretrained)
    state.update(
        vae_done=True,
        vae_wall_s=wall,
        vae_params=n_params,
        vae_scaling_factor=1.0,
        vae_latent_scale_check=scale,
        vae_latent_channel_mean=mean.tolist(),
        vae_latent_channel_std=std.tolist(),
        vae_psnr_heldout=fresh_psnr,
        vae_history=history,
    )
    logger.info(
        "vae: done in %.0f s, scaling_factor=%.4f, held-out PSNR %.2f dB", wall, scale, fresh_psnr
    )
    return vae


@torch.no_grad()
def latent_channel_stats(
    vae: Any, cfg: SDRecipeConfig, n: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (each (C,)) of posterior-mode latents of held-out renders."""
    images = heldout_renders(n, chunk=2, size=cfg.image_size)
    z = torch.cat(
        [
            vae.encode(to_model_range(images[i : i + 128])).latent_dist.mode()
            for i in range(0, n, 128)
        ]
    )  # (n, C, h, w)
    return z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))


@torch.no_grad()
def standardize_latents(vae: Any, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Reparametrise the VAE in place so its latents are zero-mean, unit-std per channel.

    ``z' = (z - mean) / std`` is folded into ``quant_conv`` (posterior mean and log-variance) and
    undone in ``post_quant_conv``, so decode(encode(x)) is unchanged; ``scaling_factor`` becomes
    1. Stock SD pipelines only know a scalar scale; without this, a luminance-like channel with
    a much larger spread than the others dominates the diffusion loss and colour is learned
    far more slowly.
    """
    c = len(mean)
    q_w, q_b = vae.quant_conv.weight, vae.quant_conv.bias  # (2C, 2C, 1, 1), (2C,)
    q_w[:c] /= std.view(c, 1, 1, 1)
    q_b[:c] = (q_b[:c] - mean) / std
    q_b[c:] -= 2.0 * torch.log(std)
    p_w, p_b = vae.post_quant_conv.weight, vae.post_quant_conv.bias  # (C, C, 1, 1), (C,)
    p_b += p_w[:, :, 0, 0] @ mean
    p_w *= std.view(1, c, 1, 1)
    vae.register_to_config(scaling_factor=1.0)


@torch.no_grad()
def latent_scaling_factor(vae: Any, cfg: SDRecipeConfig, n: int = 1024) -> float:
    """1 / std of posterior-mode latents of held-out renders (the SD `scaling_factor` recipe).

    After `standardize_latents` it is close to 1: the recipe records it as a check and keeps
    ``scaling_factor = 1``.
    """
    z = []
    images = heldout_renders(n, chunk=2, size=cfg.image_size)
    for i in range(0, n, 128):
        z.append(vae.encode(to_model_range(images[i : i + 128])).latent_dist.mode())
    return float(1.0 / torch.cat(z).flatten().std())


def decoder_batch(step: int, cfg: SDRecipeConfig) -> np.ndarray:
    """Whole covers of decoder fine-tuning step `step` (seeds disjoint from `vae_batch`)."""

    seed = zoo_seed(DECODER_DATA_OFFSET + step)
    return sample_covers(cfg.decoder_batch, seed, size=cfg.image_size).images


def finetune_decoder(work: Path, cfg: SDRecipeConfig, state: RecipeState, seed: int) -> Any:
    """Phase 4: fine-tune the VAE decoder with the encoder frozen (the SD "ft-MSE" recipe).

    The latent space the UNet was trained in stays exactly the same; only the reconstruction
    sharpens. Returns the fine-tuned VAE.
    """

    final = work / "vae_ft"
    if final.exists() and state.get("decoder_done"):
        logger.info("decoder: done already (%s)", final)
        return AutoencoderKL.from_pretrained(final)
    ckpt = latest_checkpoint(work / "decoder_ckpt")
    seed_everything(seed)
    if ckpt is None:
        vae = AutoencoderKL.from_pretrained(work / "vae")
        start, wall, history = 0, 0.0, []
    else:
        vae = AutoencoderKL.from_pretrained(ckpt / "vae")
        progress = load_trainer_state(ckpt)
        start, wall, history = progress["step"], progress["wall_s"], progress["history"]
        logger.info("decoder: resuming from %s (step %d)", ckpt, start)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    vae.encoder.eval()
    vae.decoder.train()
    opt = torch.optim.AdamW(params, lr=cfg.decoder_learning_rate, weight_decay=0.0)
    if ckpt is not None:
        load_optimizer_state(ckpt, opt)  # and the torch RNG: posterior samples continue
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: cosine_lr(s, cfg.decoder_steps, 1.0, 20, floor=0.05)
    )
    for _ in range(start):
        sched.step()
    val = heldout_renders(256)
    t0 = time.time() - wall
    bar = tqdm(
        range(start, cfg.decoder_steps),
        desc="decoder",
        mininterval=20,
        initial=start,
        total=cfg.decoder_steps,
    )
    for step in bar:
        x = to_model_range(decoder_batch(step, cfg))  # (B, 3, H, W)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()  # (B, 4, h, w), frozen encoder
        rec = vae.decode(z).sample  # (B, 3, H, W)
        loss, _, l2 = reconstruction_loss(rec, x, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{10 * math.log10(4 / l2.item()):.1f}")
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.decoder_steps:
            vae.decoder.eval()
            val_psnr = vae_psnr(vae, val)
            vae.decoder.train()
            history.append({"step": done, "val_psnr": val_psnr, "loss": loss.item()})
            logger.info("decoder step %d: loss %.4f val_psnr=%.2f dB", done, loss.item(), val_psnr)
        if done % cfg.checkpoint_every == 0 or done == cfg.decoder_steps:
            save_phase(work / "decoder_ckpt", done, opt, time.time() - t0, history, vae=vae)
    wall = time.time() - t0
    vae.eval().requires_grad_(False)
    fresh_psnr = vae_psnr(vae, heldout_renders(512, chunk=1))
    atomic_save_dir(final, vae.save_pretrained)
    state.update(
        decoder_done=True,
        decoder_wall_s=wall,
        decoder_history=history,
        vae_ft_psnr_heldout=fresh_psnr,
    )
    logger.info("decoder: done in %.0f s, held-out PSNR %.2f dB", wall, fresh_psnr)
    return vae
