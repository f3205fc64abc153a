"""Configuration of the `flow` recipe, and the `sd` data settings it shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from icg.zoo.recipes.sd.config import SDRecipeConfig

_SD = SDRecipeConfig()


class FlowRecipeConfig(BaseModel):
    """Everything the `flow` recipe needs; defaults are the model the lead trains.

    Args:
        image_size: cover edge in pixels (the reused VAE's: 64).
        num_latents: size of the cached latent/prompt set (the `sd` UNet phase's).
        defect_rate: defect rate of the renders trained on (`sd`'s ``unet_defect_rate``).
        cfg_drop: probability of replacing the prompt by ``""`` (classifier-free guidance).
        style_caption_rate, style_word_rate: the `sd` recipe's style captions
            (`icg.zoo.recipes.sd.config.caption_for`).
        patch_size: the transformer's patch edge in latent pixels (16x16 latents -> 8x8 tokens).
        num_layers: ``JointTransformerBlock`` s (the last one is ``context_pre_only``, as SD3).
        num_attention_heads, attention_head_dim: the transformer's width is their product.
        qk_norm: RMS norm of queries and keys (SD3.5's ``qk_norm="rms_norm"``), or None.
        shift: the flow scheduler's static timestep shift (Esser et al. 2024, Sec. 5.3.2). SD3
            uses 3.0 at 1024px; 1.0 (none) at 64px, where the 8x8 token grid is far below the
            256px the unshifted logit-normal density was tuned at.
        logit_mean, logit_std: SD3's logit-normal timestep density (Esser et al. 2024, Sec.
            3.1; 0 and 1 is their best setting).
        steps: optimisation steps of the transformer.
        batch: latents per step.
        learning_rate: peak AdamW learning rate (linear warm-up, cosine decay to 10%).
        warmup: warm-up steps.
        weight_decay: AdamW weight decay.
        ema_decay: largest decay of the weight EMA that is shipped.
        checkpoint_every: steps between checkpoints.
        gate_items: fresh titles (and covers) the recipe measures its gates on.
        gate_steps: Euler steps of the gate draws.
        threads: torch CPU threads.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(_SD.image_size, ge=8)
    num_latents: int = Field(_SD.num_latents, ge=1)
    defect_rate: float = Field(_SD.unet_defect_rate, ge=0, le=1)
    cfg_drop: float = _SD.cfg_drop
    style_caption_rate: float = Field(_SD.style_caption_rate, ge=0, le=1)
    style_word_rate: float = Field(_SD.style_word_rate, gt=0, le=1)
    patch_size: int = Field(2, ge=1)
    num_layers: int = Field(3, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    attention_head_dim: int = Field(32, ge=1)
    qk_norm: str | None = "rms_norm"
    shift: float = Field(1.0, gt=0)
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0)
    steps: int = Field(8000, ge=1)
    batch: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    warmup: int = Field(200, ge=0)
    weight_decay: float = Field(1e-2, ge=0)
    ema_decay: float = Field(0.995, ge=0, lt=1)
    checkpoint_every: int = Field(100, ge=1)
    gate_items: int = Field(512, ge=1)
    gate_steps: int = Field(25, ge=1)
    threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> FlowRecipeConfig:
        if not 0.0 <= self.cfg_drop < 1.0:
            raise ValueError(f"cfg_drop={self.cfg_drop}: expected 0 <= cfg_drop < 1")
        if self.qk_norm not in (None, "rms_norm", "layer_norm"):
            raise ValueError(f"qk_norm={self.qk_norm!r}: expected None, 'rms_norm' or 'layer_norm'")
        return self

    @property
    def width(self) -> int:
        """The transformer's hidden width (heads x head dim)."""
        return self.num_attention_heads * self.attention_head_dim

    def sd_data(self) -> SDRecipeConfig:
        """The `sd` configuration whose data settings are these, for the `sd` data helpers
        (`icg.zoo.recipes.sd.unet.render_chunk`): the same renders and captions."""
        return SDRecipeConfig(
            image_size=self.image_size,
            num_latents=self.num_latents,
            unet_defect_rate=self.defect_rate,
            cfg_drop=self.cfg_drop,
            style_caption_rate=self.style_caption_rate,
            style_word_rate=self.style_word_rate,
        )
