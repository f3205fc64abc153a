"""The `flow` recipe's data: the `sd` UNet phase's covers and prompts, encoded the SD3 way.

The cache holds the latents of the renders (`icg.zoo.recipes.sd.unet.render_chunk`: the same
zoo seeds and captions as `sd`'s UNet) and each prompt's CLIP states and pooled projection
once; `sd3_text` builds from them exactly what ``StableDiffusion3Pipeline.encode_prompt`` feeds
the transformer (both CLIP slots hold the one tower; T5 absent: zeros).
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusion3Pipeline

from icg.training.flow import logit_normal_sigmas, scheduler_sigmas
from icg.zoo.recipes.flow.config import FlowRecipeConfig
from icg.zoo.recipes.sd.unet import chunked_cache, render_chunk

logger = logging.getLogger(__name__)

# The zero "T5" tokens StableDiffusion3Pipeline appends when text_encoder_3 is None: its default
# max_sequence_length, which every caller that does not pass one (icg's included) draws with.
T5_TOKENS: int = (
    inspect.signature(StableDiffusion3Pipeline.encode_prompt)
    .parameters["max_sequence_length"]
    .default
)
CHUNK = 512


@torch.no_grad()
def encode_clip(text_encoder: Any, tokenizer: Any, prompts: list[str]) -> dict[str, torch.Tensor]:
    """One CLIP slot's conditioning as ``StableDiffusion3Pipeline._get_clip_prompt_embeds``
    makes it: the penultimate hidden states ``(N, L, C)`` (padded to the tokenizer's length)
    and the pooled projection ``(N, P)``."""
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids  # (N, L)
    out = text_encoder(ids.to(text_encoder.device), output_hidden_states=True)
    return {"states": out.hidden_states[-2], "pooled": out[0]}  # (N, L, C), (N, P)


def sd3_text(
    states: torch.Tensor, pooled: torch.Tensor, joint_attention_dim: int, t5_tokens: int = T5_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``StableDiffusion3Pipeline.encode_prompt`` from one CLIP slot's `encode_clip` output, the
    same tower in both slots: states ``(B, L, C)`` -> ``(B, L + t5_tokens, joint_attention_dim)``
    (the two slots concatenated on features, zero-padded, then `t5_tokens` zero rows), pooled
    ``(B, P)`` -> ``(B, 2P)``."""
    clip = torch.cat([states, states], dim=-1)  # (B, L, 2C)
    if clip.shape[-1] > joint_attention_dim:
        raise ValueError(
            f"joint_attention_dim={joint_attention_dim}: smaller than the CLIP states' "
            f"{clip.shape[-1]}"
        )
    clip = torch.nn.functional.pad(clip, (0, joint_attention_dim - clip.shape[-1]))
    t5 = clip.new_zeros(clip.shape[0], t5_tokens, joint_attention_dim)  # (B, T5, D)
    return torch.cat([clip, t5], dim=1), torch.cat([pooled, pooled], dim=-1)


def flow_data(
    work: Path, cfg: FlowRecipeConfig, vae: Any, text_encoder: Any, tokenizer: Any
) -> dict[str, torch.Tensor]:
    """Latents and prompt encodings of `num_latents` zoo renders, cached in ``work``.

    Chunks of 512 renders are cached one file each (atomic), so an interrupted cache resumes.
    Returns ``{"latents": (N, C, h, w) float32, "states": (N, L, C_text) float16,
    "pooled": (N, P) float32, "uncond_states": (L, C_text), "uncond_pooled": (P,)}``; the
    unconditional entries encode ``""`` (what the pipeline's CFG and the prompt dropout use).
    """
    sd_cfg = cfg.sd_data()
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0

    def encode(c: int, size: int) -> dict[str, torch.Tensor]:
        z, prompts = render_chunk(c, size, sd_cfg, vae, scale, shift)  # (B, C, h, w)
        text = encode_clip(text_encoder, tokenizer, prompts)
        return {"latents": z, "states": text["states"].half(), "pooled": text["pooled"]}

    def uncond() -> dict[str, torch.Tensor]:
        text = encode_clip(text_encoder, tokenizer, [""])
        return {"uncond_states": text["states"][0], "uncond_pooled": text["pooled"][0]}

    return chunked_cache(work, cfg.num_latents, encode, uncond, "flow latents", CHUNK)


def batch(
    step: int,
    seed: int,
    data: dict[str, torch.Tensor],
    cfg: FlowRecipeConfig,
    scheduler: Any,
    joint_attention_dim: int,
) -> dict[str, torch.Tensor]:
    """Step `step`'s rows, prompt dropout, noise and sigmas: a pure function of (seed, step).

    Sigmas are SD3's logit-normal draws mapped through the scheduler's sigma table
    (`icg.training.flow.scheduler_sigmas`), as icg's stage A draws them on this base.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, len(data["latents"]), (cfg.batch,), generator=g)
    latents = data["latents"][idx]  # (B, C, h, w)
    states = data["states"][idx].float()  # (B, L, C_text)
    pooled = data["pooled"][idx].float()  # (B, P)
    drop = torch.rand(cfg.batch, generator=g) < cfg.cfg_drop
    states[drop] = data["uncond_states"].float()
    pooled[drop] = data["uncond_pooled"].float()
    text, pooled = sd3_text(states, pooled, joint_attention_dim)
    noise = torch.randn(latents.shape, generator=g)
    u = logit_normal_sigmas(cfg.batch, g, cfg.logit_mean, cfg.logit_std)
    return {
        "latents": latents,
        "text": text,  # (B, L + T5, D)
        "pooled": pooled,  # (B, 2P)
        "noise": noise,
        "sigmas": scheduler_sigmas(scheduler, u),  # (B,)
    }
