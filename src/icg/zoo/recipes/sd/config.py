"""Configuration, data seeds and prompts of the `sd` recipe."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from icg.world.attributes import STYLE_DIMS
from icg.zoo.recipes.clip.texts import style_phrase

# Offsets inside the zoo seed range, one per use, so phases never share renders.
VAE_DATA_OFFSET = 0  # VAE step k renders with zoo_seed(k)
LATENT_DATA_OFFSET = 1_000_000  # latent cache chunk c renders with zoo_seed(1_000_000 + c)
DECODER_DATA_OFFSET = 2_000_000  # decoder fine-tuning step k renders with zoo_seed(2_000_000 + k)
HELDOUT_OFFSET = 9_000_000  # held-out renders for the recipe's own PSNR checks

PROMPT_TEMPLATE = "a cover for {title}"


class SDRecipeConfig(BaseModel):
    """Everything the `sd` recipe needs; defaults are the shipped model.

    Args:
        image_size: cover edge in pixels.
        vae_channels: AutoencoderKL block widths; len - 1 downsamplings (64 -> 16).
        latent_channels: latent depth.
        vae_steps: optimisation steps of the VAE, each on a fresh batch of renders.
        vae_full_steps: the last steps, on whole covers; the ones before train on random
            `vae_crop` crops (the VAE is fully convolutional, so crops cost a quarter and teach
            the same local code; the whole-cover steps adapt it to borders and layout).
        vae_crop: crop edge of the crop steps.
        vae_batch: crops per crop step.
        vae_full_batch: whole covers per whole-cover step.
        vae_learning_rate: peak AdamW learning rate of the VAE.
        vae_kl_weight: weight of the KL summed over latent elements (loss terms are pixel means).
        vae_edge_weight: weight of the L1 on horizontal/vertical finite differences.
        vae_chroma_weight: weight of the L1 on 4x4-mean chroma (`pixels.chroma_l1`), in VAE
            training and decoder fine-tuning: muted colours kept (0: off, as in v2).
        decoder_steps: steps of decoder-only fine-tuning on whole covers (encoder frozen).
        decoder_batch: whole covers per decoder step.
        decoder_learning_rate: peak learning rate of the decoder fine-tuning.
        unet_channels: UNet block widths (16 -> 8 -> 4 latent resolution).
        unet_steps: optimisation steps of the UNet.
        unet_batch: latents per UNet step.
        unet_learning_rate: peak AdamW learning rate of the UNet.
        ema_decay: largest decay of the weight EMA that is shipped.
        num_latents: size of the cached latent/prompt set.
        unet_defect_rate: defect rate of the UNet's renders (lower than the platform's 0.25,
            so that the base model draws clean covers).
        cfg_drop: probability of replacing the prompt by "" during UNet training.
        style_caption_rate: share of UNet prompts that also name the cover's style
            (`caption_for`); the rest are the plain prompt. 0 trains on plain prompts only, and
            then the text conditioning never controls style (what ICG's user path steers).
        style_word_rate: in a style caption, each style dimension is named with this
            probability (at least one is), so any subset of style words conditions.
        min_snr_gamma: min-SNR loss weighting (Hang et al. 2023); 0 disables.
        num_train_timesteps: diffusion steps of the training schedule.
        checkpoint_every: steps between checkpoints (every phase).
        eval_every: VAE and decoder steps between held-out PSNR checks.
        gate_items: fresh titles (and covers) the recipe measures its gates on.
        threads: torch CPU threads.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, ge=8)
    vae_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = Field(8, ge=1)
    vae_steps: int = Field(3000, ge=1)
    vae_full_steps: int = Field(100, ge=0)
    vae_crop: int = Field(32, ge=1)
    vae_batch: int = Field(64, ge=1)
    vae_full_batch: int = Field(32, ge=1)
    vae_learning_rate: float = Field(2e-3, gt=0)
    vae_kl_weight: float = Field(1e-7, ge=0)
    vae_edge_weight: float = Field(0.5, ge=0)
    vae_chroma_weight: float = Field(5.0, ge=0)
    decoder_steps: int = Field(2000, ge=1)
    decoder_batch: int = Field(16, ge=1)
    decoder_learning_rate: float = Field(1e-3, gt=0)
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_steps: int = Field(8000, ge=1)
    unet_batch: int = Field(64, ge=1)
    unet_learning_rate: float = Field(1.5e-3, gt=0)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    num_latents: int = Field(16_384, ge=1)
    unet_defect_rate: float = Field(0.1, ge=0, le=1)
    cfg_drop: float = 0.1
    style_caption_rate: float = Field(0.8, ge=0, le=1)
    style_word_rate: float = Field(0.6, gt=0, le=1)
    min_snr_gamma: float = Field(5.0, ge=0)
    num_train_timesteps: int = Field(1000, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    eval_every: int = Field(250, ge=1)
    gate_items: int = Field(512, ge=1)
    threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> SDRecipeConfig:
        if self.image_size % 2 ** (len(self.vae_channels) - 1):
            raise ValueError(
                f"image_size={self.image_size}: expected a multiple of "
                f"{2 ** (len(self.vae_channels) - 1)} for vae_channels={self.vae_channels}"
            )
        if not 0.0 <= self.cfg_drop < 1.0:
            raise ValueError(f"cfg_drop={self.cfg_drop}: expected 0 <= cfg_drop < 1")
        return self

    @property
    def latent_size(self) -> int:
        """Latent edge: `image_size` over the VAE's downsampling factor."""
        return self.image_size // 2 ** (len(self.vae_channels) - 1)


def prompts_for(titles: list[str]) -> list[str]:
    """The plain prompt of the recipe and of the gates: ``"a cover for <title>"``."""
    return [PROMPT_TEMPLATE.format(title=t) for t in titles]


def style_phrases(levels: np.ndarray, dims: list[int] | None = None) -> list[str]:
    """The `clip` recipe's words for style levels (S,), e.g. "dark", "on the left", "a thin
    frame"; only the dimensions `dims` (default: all)."""

    dims = range(len(STYLE_DIMS)) if dims is None else dims
    return [style_phrase(STYLE_DIMS[d], int(levels[d])) for d in dims]


def styled_prompt(title: str, levels: np.ndarray, dims: list[int] | None = None) -> str:
    """The plain prompt followed by words for style levels (S,) of `dims` (default: all):
    ``"a cover for <title>, dark, a thin frame"``."""
    return ", ".join([PROMPT_TEMPLATE.format(title=title), *style_phrases(levels, dims)])


def caption_for(
    title: str, levels: np.ndarray, rng: np.random.Generator, cfg: SDRecipeConfig
) -> str:
    """A UNet training prompt: the plain prompt, or with `style_caption_rate` the plain prompt
    followed by words for a random non-empty subset of the cover's style levels (S,):
    ``"a cover for <title>, dark, a thin frame"``."""
    if rng.random() >= cfg.style_caption_rate:
        return PROMPT_TEMPLATE.format(title=title)
    dims = [d for d in range(len(STYLE_DIMS)) if rng.random() < cfg.style_word_rate]
    dims = dims or [int(rng.integers(len(STYLE_DIMS)))]
    return styled_prompt(title, levels, dims)
