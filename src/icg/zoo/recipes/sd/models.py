"""The parts of the `sd` pipeline: a fresh VAE, UNet and schedulers, and their assembly."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

from icg.zoo.recipes.sd.config import SDRecipeConfig

VAE_INIT_LOGVAR = -10.0


def build_vae(cfg: SDRecipeConfig) -> Any:
    """A fresh AutoencoderKL with 3 encoder/decoder blocks and 16x16x4 latents at 64px.

    The posterior log-variance starts at `VAE_INIT_LOGVAR` (std 0.007) instead of 0: with a
    tiny KL weight nothing else shrinks it quickly, and unit posterior noise on the latents
    drowns the low-variance colour channels for hundreds of steps.
    """

    n = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=8,
        sample_size=cfg.image_size,
        scaling_factor=1.0,
        mid_block_add_attention=False,  # purely convolutional: crop training transfers
    )
    with torch.no_grad():
        logvar = slice(cfg.latent_channels, 2 * cfg.latent_channels)  # quant_conv: (mean, logvar)
        vae.quant_conv.weight[logvar].mul_(0.01)
        vae.quant_conv.bias[logvar].fill_(VAE_INIT_LOGVAR)
    return vae


def build_unet(cfg: SDRecipeConfig, cross_attention_dim: int) -> Any:
    """A fresh UNet2DConditionModel over (latent_channels, 16, 16) latents."""

    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        # attention at 8x8 and 4x4 only: self-attention over 16x16 tokens would dominate a CPU step
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_train_scheduler(cfg: SDRecipeConfig) -> Any:
    """DDPM training schedule: cosine betas (Nichol & Dhariwal 2021, Sec. 3.2), v-prediction."""

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
    )


def build_sample_scheduler(cfg: SDRecipeConfig) -> Any:
    """DDIM sampler over the training betas, trailing spacing so the first step is t=T-1
    (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", Sec. 3.3)."""

    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # only read by "leading" spacing; 1 keeps the pipeline's check quiet
        timestep_spacing="trailing",
    )


def assemble(vae: Any, unet: Any, text_encoder: Any, tokenizer: Any, cfg: SDRecipeConfig) -> Any:
    """The StableDiffusionPipeline of the parts: DDIM sampler, no safety checker."""

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sample_scheduler(cfg),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
