"""The parts of the `flow` pipeline: the reused VAE and text tower, a fresh MMDiT, assembly.

Only the transformer is trained. The VAE is `sd`'s (its per-channel latent standardisation is
folded into ``quant_conv``, so ``scaling_factor`` 1 and ``shift_factor`` 0 are exact), and both
of SD3's CLIP slots hold the `clip` text tower as a ``CLIPTextModelWithProjection``: the text
tower and the ``text_projection`` of the contrastively trained ``CLIPModel``, as CLIP-L/G ship
in SD3 (`load_text_tower`). The zoo has one tower, so ``text_encoder_2`` is the same model;
``text_encoder_3`` (T5) is None, which ``StableDiffusion3Pipeline`` fills with zeros.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import AutoConfig, CLIPConfig, CLIPTextModelWithProjection, CLIPTokenizer

from icg.io import atomic_dir, atomic_save_dir
from icg.zoo.recipes.flow.config import FlowRecipeConfig

logger = logging.getLogger(__name__)


def load_text_tower(clip_dir: Path) -> tuple[Any, Any]:
    """A frozen ``CLIPTextModelWithProjection`` and ``CLIPTokenizer`` from a ``CLIPModel`` (or
    ``CLIPTextModelWithProjection``) folder: the text tower and its trained ``text_projection``
    (a ``CLIPModel`` checkpoint holds both under the same keys; its vision tower is dropped)."""
    clip_dir = Path(clip_dir)
    if not (clip_dir / "config.json").exists():
        raise FileNotFoundError(
            f"clip_dir={clip_dir}: no CLIP checkpoint; train it first (`icg zoo train clip`)"
        )
    config = AutoConfig.from_pretrained(str(clip_dir))
    if isinstance(config, CLIPConfig):  # the projection's width is the CLIPModel's, not the tower's
        config = config.text_config
        config.projection_dim = AutoConfig.from_pretrained(str(clip_dir)).projection_dim
    model, info = CLIPTextModelWithProjection.from_pretrained(
        str(clip_dir), config=config, output_loading_info=True
    )
    if info["missing_keys"] or info["mismatched_keys"]:
        lost = sorted(info["missing_keys"]) + [k[0] for k in info["mismatched_keys"]]
        raise ValueError(f"clip_dir={clip_dir}: the text tower does not load whole: {lost[:4]}")
    return model.eval().requires_grad_(False), CLIPTokenizer.from_pretrained(str(clip_dir))


def frozen_text_tower(work: Path, clip_dir: Path) -> tuple[Any, Any]:
    """The run's text tower, copied once from `clip_dir` into ``work/text_tower``, so that the
    prompt cache, the transformer and the published pipeline all use the same weights."""
    copy = Path(work) / "text_tower"
    if not (copy / "config.json").exists():
        model, tokenizer = load_text_tower(clip_dir)
        with atomic_dir(copy) as tmp:
            model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        logger.info("flow: text tower copied from %s", clip_dir)
    return load_text_tower(copy)


def frozen_vae(work: Path, vae_from: Path) -> Any:
    """The VAE of a published `sd` folder, copied once into ``work/vae`` with
    ``shift_factor = 0`` written out (SD3's pipeline subtracts it; `sd`'s latents are already
    standardised, so 0 is exact and the weights are unchanged)."""
    copy = Path(work) / "vae"
    if not (copy / "config.json").exists():
        source = Path(vae_from) / "vae"
        if not (source / "config.json").exists():
            raise FileNotFoundError(f"vae_from={vae_from}: no vae/config.json (a `sd` folder?)")
        vae = AutoencoderKL.from_pretrained(str(source))
        if vae.config.shift_factor is None:
            vae.register_to_config(shift_factor=0.0)
        atomic_save_dir(copy, vae.save_pretrained)
        logger.info("flow: VAE copied from %s", source)
    return AutoencoderKL.from_pretrained(str(copy)).eval().requires_grad_(False)


def build_transformer(
    cfg: FlowRecipeConfig, latent_channels: int, latent_size: int, text_width: int, pooled: int
) -> Any:
    """A fresh ``SD3Transformer2DModel`` over ``(latent_channels, latent_size, latent_size)``
    latents, with the adaLN-Zero initialisation of DiT (`zero_init`).

    Args:
        text_width: width of one CLIP slot's states (SD3 concatenates the two: the joint
            attention dim is twice it).
        pooled: width of one CLIP slot's pooled projection (concatenated likewise).
    """
    if latent_size % cfg.patch_size:
        raise ValueError(f"patch_size={cfg.patch_size}: expected a divisor of {latent_size}")
    model = SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=cfg.patch_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=cfg.num_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=2 * text_width,
        caption_projection_dim=cfg.width,
        pooled_projection_dim=2 * pooled,
        pos_embed_max_size=latent_size // cfg.patch_size,
        qk_norm=cfg.qk_norm,
    )
    zero_init(model)
    return model


@torch.no_grad()
def zero_init(transformer: Any) -> None:
    """adaLN-Zero (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", Sec. 3.2):
    every block's modulation and the output layer start at zero, so each block starts as the
    identity and the untrained model predicts zero velocity."""
    for name, module in transformer.named_modules():
        if isinstance(module, torch.nn.Linear) and (
            name.endswith("norm1.linear")
            or name.endswith("norm1_context.linear")
            or name in ("norm_out.linear", "proj_out")
        ):
            module.weight.zero_()
            module.bias.zero_()


def build_scheduler(cfg: FlowRecipeConfig) -> Any:
    """The flow-matching Euler scheduler of training (its sigma table) and sampling."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=cfg.shift)


def assemble(vae: Any, transformer: Any, text_encoder: Any, tokenizer: Any, cfg) -> Any:
    """The ``StableDiffusion3Pipeline`` of the parts: the one CLIP tower in both CLIP slots,
    no T5."""
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=build_scheduler(cfg),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )
