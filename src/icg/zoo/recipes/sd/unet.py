"""Phases 2 and 3 of the `sd` recipe: the latent/prompt cache, then the UNet on it."""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from icg.io import atomic_dir, atomic_path
from icg.world.sampling import sample_covers
from icg.world.seeds import zoo_seed
from icg.zoo.recipes.sd.config import LATENT_DATA_OFFSET, SDRecipeConfig, caption_for
from icg.zoo.recipes.sd.denoiser_phase import Optimisation, train_denoiser
from icg.zoo.recipes.sd.models import build_train_scheduler, build_unet
from icg.zoo.recipes.sd.pixels import to_model_range
from icg.zoo.recipes.sd.state import RecipeState

logger = logging.getLogger(__name__)


def load_text_tower(clip_dir: Path) -> tuple[Any, Any]:
    """The frozen text tower (CLIPTextModel) and CLIPTokenizer of the `clip` checkpoint."""

    if not (Path(clip_dir) / "config.json").exists():
        raise FileNotFoundError(
            f"clip_dir={clip_dir}: no CLIP checkpoint; train it first (`icg zoo train clip`)"
        )
    text_encoder = CLIPTextModel.from_pretrained(str(clip_dir)).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir))
    return text_encoder, tokenizer


def frozen_text_tower(work: Path, clip_dir: Path) -> tuple[Any, Any]:
    """The text tower of this run: copied once from `clip_dir` into ``work/text_tower``.

    The latent/prompt cache, the UNet and the shipped pipeline must all use the very same text
    tower, even if the `clip` folder is retrained while this recipe runs.
    """

    copy = work / "text_tower"
    if not (copy / "config.json").exists():
        save_text_tower(work, *load_text_tower(clip_dir))
        logger.info("text tower: copied from %s", clip_dir)
    text_encoder = CLIPTextModel.from_pretrained(str(copy)).eval().requires_grad_(False)
    return text_encoder, CLIPTokenizer.from_pretrained(str(copy))


def save_text_tower(work: Path, text_encoder: Any, tokenizer: Any) -> None:
    """Write the run's text tower (`frozen_text_tower` reads it) into ``work/text_tower``."""
    with atomic_dir(work / "text_tower") as tmp:
        text_encoder.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))


@torch.no_grad()
def encode_prompts(text_encoder: Any, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
    """Prompt embeddings exactly as ``StableDiffusionPipeline.encode_prompt`` makes them.

    Padded to ``tokenizer.model_max_length``; returns the last hidden state (N, L, D).
    """
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids  # (N, L)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = ids.ne(tokenizer.pad_token_id).long()
    return text_encoder(ids, attention_mask=mask)[0]  # (N, L, D)


@torch.no_grad()
def render_chunk(
    c: int, size: int, cfg: SDRecipeConfig, vae: Any, scale: float, shift: float = 0.0
) -> tuple[torch.Tensor, list[str]]:
    """Chunk `c` of the latent cache: `size` renders of ``zoo_seed(LATENT_DATA_OFFSET + c)``
    encoded by `vae` (posterior mode, ``(z - shift) * scale``: (B, C, h, w)) and their
    `caption_for` prompts. A pure function of `c`, so every denoiser recipe that caches through
    it trains on the same covers and prompts."""
    s = sample_covers(
        size,
        zoo_seed(LATENT_DATA_OFFSET + c),
        size=cfg.image_size,
        defect_rate=cfg.unet_defect_rate,
    )
    z = (vae.encode(to_model_range(s.images)).latent_dist.mode() - shift) * scale  # (B, C, h, w)
    rng = np.random.default_rng([LATENT_DATA_OFFSET, c])  # captions: a function of the chunk
    prompts = [caption_for(t, lv, rng, cfg) for t, lv in zip(s.titles, s.style, strict=True)]
    return z, prompts


def unet_data(
    work: Path, cfg: SDRecipeConfig, vae: Any, text_encoder: Any, tokenizer: Any
) -> dict[str, torch.Tensor]:
    """Phase 2: latents (x scaling_factor) and prompt embeddings of `num_latents` zoo renders.

    Prompts are `caption_for` each render: its title, and for most also words for its style.

    Chunks of 512 renders are cached one file each (atomic), so an interrupted cache resumes.
    Returns {"latents": (N, 4, 16, 16) float32, "text": (N, L, D) float16, "uncond": (L, D)}.
    """

    scale = vae.config.scaling_factor

    def encode(c: int, size: int) -> dict[str, torch.Tensor]:
        z, prompts = render_chunk(c, size, cfg, vae, scale)
        return {"latents": z, "text": encode_prompts(text_encoder, tokenizer, prompts).half()}

    return chunked_cache(
        work, cfg.num_latents, encode,
        lambda: {"uncond": encode_prompts(text_encoder, tokenizer, [""])[0]},
    )  # fmt: skip


def chunked_cache(
    work: Path,
    num: int,
    encode: Callable[[int, int], dict[str, torch.Tensor]],
    extra: Callable[[], dict[str, torch.Tensor]],
    label: str = "latents",
    chunk: int = 512,
) -> dict[str, torch.Tensor]:
    """``work/latents.pt``: ``encode(c, size)``'s tensors of chunks 0, 1, ... concatenated and cut
    to ``num`` rows, plus ``extra()``. Each chunk is saved atomically as it is made, so an
    interrupted cache resumes; the finished cache is read back as is (`torch.load`,
    ``weights_only``: a file this recipe wrote)."""
    final = work / "latents.pt"
    if final.exists():
        return torch.load(final, weights_only=True)
    chunk_dir = work / "latent_chunks"
    size = min(chunk, num)
    n_chunks = math.ceil(num / size)
    for c in tqdm(range(n_chunks), desc=label, mininterval=20):
        file = chunk_dir / f"chunk-{c:04d}.pt"
        if file.exists():
            continue
        tensors = encode(c, size)
        with atomic_path(file) as tmp:
            torch.save(tensors, tmp)
    parts = [
        torch.load(chunk_dir / f"chunk-{c:04d}.pt", weights_only=True) for c in range(n_chunks)
    ]
    data = {k: torch.cat([p[k] for p in parts])[:num] for k in parts[0]} | extra()
    with atomic_path(final) as tmp:
        torch.save(data, tmp)
    shutil.rmtree(chunk_dir, ignore_errors=True)
    logger.info(
        "%s: %s, mean %.3f std %.3f",
        label,
        tuple(data["latents"].shape),
        data["latents"].mean().item(),
        data["latents"].std().item(),
    )
    return data


def unet_batch(
    step: int, seed: int, data: dict[str, torch.Tensor], cfg: SDRecipeConfig, num_timesteps: int
) -> dict[str, torch.Tensor]:
    """Indices, noise, timesteps and prompt dropout of UNet step `step`: a pure function of it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    n = len(data["latents"])
    idx = torch.randint(0, n, (cfg.unet_batch,), generator=g)
    latents = data["latents"][idx]  # (B, 4, h, w)
    text = data["text"][idx].float()  # (B, L, D)
    drop = torch.rand(cfg.unet_batch, generator=g) < cfg.cfg_drop
    text[drop] = data["uncond"].float()
    return {
        "latents": latents,
        "text": text,
        "noise": torch.randn(latents.shape, generator=g),
        "timesteps": torch.randint(0, num_timesteps, (cfg.unet_batch,), generator=g),
    }


def min_snr_weight(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Loss weight of v-prediction under min-SNR-gamma (Hang et al. 2023, Eq. 8): min(snr, g)/(snr+1)."""
    if gamma <= 0:
        return torch.ones_like(snr)
    return torch.clamp(snr, max=gamma) / (snr + 1.0)


def unet_loss(unet: Any, scheduler: Any, b: dict[str, torch.Tensor], gamma: float) -> torch.Tensor:
    """v-prediction MSE with min-SNR-gamma weights of one batch."""
    t = b["timesteps"]
    noisy = scheduler.add_noise(b["latents"], b["noise"], t)  # (B, 4, h, w)
    target = scheduler.get_velocity(b["latents"], b["noise"], t)  # (B, 4, h, w)
    pred = unet(noisy, t, encoder_hidden_states=b["text"]).sample  # (B, 4, h, w)
    alphas = scheduler.alphas_cumprod[t]
    weight = min_snr_weight(alphas / (1.0 - alphas), gamma)  # (B,)
    return (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()


def train_unet(
    work: Path, cfg: SDRecipeConfig, state: RecipeState, seed: int, data: dict[str, torch.Tensor]
) -> Any:
    """Phase 3: train the UNet on the cached latents (`train_denoiser`); returns the EMA UNet."""
    scheduler = build_train_scheduler(cfg)
    num_timesteps = scheduler.config.num_train_timesteps
    optimisation = Optimisation(
        steps=cfg.unet_steps,
        learning_rate=cfg.unet_learning_rate,
        warmup=100,
        weight_decay=1e-2,
        ema_decay=cfg.ema_decay,
        checkpoint_every=cfg.checkpoint_every,
    )
    return train_denoiser(
        work,
        "unet",
        state,
        seed,
        optimisation,
        model_class=UNet2DConditionModel,
        build=lambda: build_unet(cfg, cross_attention_dim=data["text"].shape[-1]),
        batch=lambda step: unet_batch(step, seed, data, cfg, num_timesteps),
        loss_fn=lambda unet, b: unet_loss(unet, scheduler, b, cfg.min_snr_gamma),
    )
