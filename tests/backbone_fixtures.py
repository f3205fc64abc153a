"""Tiny random SD3 and FLUX pipelines, built in code as diffusers' own pipeline tests build them
(one or two blocks, 32-wide attention, CLIP towers of width 32, no T5 for SD3, a 2-layer T5
for FLUX), plus `tiny_icg_for`, an ICG model on any of the four families."""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from model_fixtures import (
    get_dummy_components,
    get_dummy_sdxl_components,
    tiny_clip_text,
    tiny_qwen2vl,
    word_tokenizer,
)
from transformers import T5Config, T5EncoderModel

FAMILIES = ("sd15", "sdxl", "sd3", "flux")


def tiny_sd3_transformer(seed: int = 0) -> SD3Transformer2DModel:
    """diffusers' test config for ``SD3Transformer2DModel`` with two blocks (the last one
    ``context_pre_only``), SD3.5's dual attention in the first and RMS q/k norms."""
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=32,
        patch_size=1,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=32,
        pooled_projection_dim=64,
        out_channels=4,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    ).eval()


def tiny_flux_transformer(seed: int = 0) -> FluxTransformer2DModel:
    """diffusers' test config for ``FluxTransformer2DModel`` (one double, one single block)."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    ).eval()


def _flow_vae(latent_channels: int, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


def tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """A ``StableDiffusion3Pipeline``: two CLIP towers with projection, no T5 (zeros, as SD3
    allows), a one-level VAE and the flow-matching Euler scheduler."""
    text_encoder, tokenizer = tiny_clip_text(32, projection=True, seed=seed)
    text_encoder_2, tokenizer_2 = tiny_clip_text(32, projection=True, seed=seed + 1)
    pipe = StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flow_vae(4, seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_t5(seed: int = 0):
    """A 2-layer random ``T5EncoderModel`` of width 32 with a word-level tokenizer."""
    tokenizer = word_tokenizer(["<pad>", "<unk>", "<bos>", "</s>"], model_max_length=16)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=3,
    )
    return T5EncoderModel(config).eval(), tokenizer


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """A ``FluxPipeline``: a CLIP tower (pooled), a tiny T5, a one-level VAE with one latent
    channel (packed 2×2 into the transformer's 4 input channels)."""
    text_encoder, tokenizer = tiny_clip_text(32, seed=seed)
    text_encoder_2, tokenizer_2 = tiny_t5(seed + 1)
    pipe = FluxPipeline(
        transformer=tiny_flux_transformer(seed),
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flow_vae(1, seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline(family: str, seed: int = 0):
    """A tiny stock diffusers pipeline of ``family`` (one of `FAMILIES`)."""
    if family == "sd15":
        pipe = StableDiffusionPipeline(**get_dummy_components(seed))
    elif family == "sdxl":
        pipe = StableDiffusionXLPipeline(**get_dummy_sdxl_components(seed), add_watermarker=False)
    elif family == "sd3":
        return tiny_sd3_pipeline(seed)
    elif family == "flux":
        return tiny_flux_pipeline(seed)
    else:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw_kwargs(family: str) -> dict:
    """Base-pipeline keywords for a 2-step 32-px draw (SD3/FLUX: short text sequences)."""
    kw = dict(num_inference_steps=2, guidance_scale=5.0, height=32, width=32, output_type="pt")
    if family in ("sd3", "flux"):
        kw["max_sequence_length"] = 8
    if family == "flux":
        kw["guidance_scale"] = 3.5  # FLUX.1: distilled guidance, one batch
    return kw


def tiny_icg_for(family: str, seed: int = 0, user_dim: int = 6, global_conditioning: bool = True):
    """A tiny pipeline of ``family`` and a fresh ICG model (Qwen2-VL MLLM) for its denoiser."""
    from icg.models.backbones import denoiser_of
    from icg.models.icg_model import ICGModel

    base = tiny_pipeline(family, seed)
    mllm, processor = tiny_qwen2vl(seed)
    torch.manual_seed(seed)
    model = ICGModel.build(
        denoiser_of(base),
        mllm,
        processor,
        num_meta_tokens=3,
        num_tokens=2,
        user_dim=user_dim,
        refiner_hidden_dim=8,
        base_model=f"tiny-{family}",
        mllm_name_or_path="tiny-qwen2vl",
        global_conditioning=global_conditioning,
    )
    return base, model
