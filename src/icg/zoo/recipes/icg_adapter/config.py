"""Configuration of the `icg-adapter` recipe (IP-Adapter-style pretraining of the ICG model)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from icg.config import DEFAULT_BASE, DEFAULT_GUIDANCE, DEFAULT_MLLM, DEFAULT_STEPS

# zoo_seed(DATA_OFFSET + step) renders the batch of `step` (no other recipe uses this range)
DATA_OFFSET = 4_000_000


class IcgAdapterRecipeConfig(BaseModel):
    """Everything the `icg-adapter` recipe needs; defaults are the shipped model.

    The architecture fields (``num_meta_tokens`` to ``base_prompt``) default to stage A's
    (`icg.training.align.AlignConfig`), so ``--init-adapter zoo:icg-adapter`` fits a default
    stage A (a test keeps them equal).

    Args:
        base: the diffusers SD pipeline whose UNet the adapter steers (zoo name, path, hub id).
        mllm: the image-text-to-text model the meta tokens read (zoo name, path, hub id).
        num_meta_tokens: meta tokens appended to the MLLM's input (``K``).
        num_tokens: ICG tokens the adapter emits (``K'``; None: ``K``).
        global_conditioning: the adapter also conditions the UNet's timestep embedding.
        read_image: the MLLM reads the cover with its title (False: the title only).
        base_prompt: the base model's text prompt; ``{title}`` is replaced.
        steps: optimizer steps, each on a fresh batch of renders.
        batch_size: covers per step.
        learning_rate: peak AdamW learning rate (linear warmup, cosine decay).
        warmup: warmup steps.
        weight_decay: AdamW weight decay.
        grad_clip: gradient norm clip.
        text_dropout: probability that a cover's text prompt is replaced by "": the adapter
            alone must then carry motif, palette and style (IP-Adapter drops 5%; ICG's adapter
            must carry the cover without a prompt, so far more).
        defect_rate: rate of blurred, noisy or faded renders (the base `sd` trained on 0.1).
        image_size: render size in pixels (None: the base's ``sample_size`` × VAE factor).
        ema_decay: largest decay of the weight EMA that is published (None: the raw weights).
        checkpoint_every: steps between checkpoints.
        log_every: steps between loss records.
        gate_items: fresh renders the gates are measured on.
        gate_steps: sampling steps of the gate draws.
        gate_guidance: CFG scale of the gate draws.
        threads: torch CPU threads.
        device: where the base, the MLLM and the adapter run ("cpu" for the zoo models; "cuda"
            for a real base).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = DEFAULT_BASE
    mllm: str = DEFAULT_MLLM
    num_meta_tokens: int = Field(8, ge=1)
    num_tokens: int | None = Field(None, ge=1)
    global_conditioning: bool = True
    read_image: bool = True
    base_prompt: str = "a cover for {title}"
    steps: int = Field(6000, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    warmup: int = Field(200, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    text_dropout: float = Field(0.7, ge=0, le=1)
    defect_rate: float = Field(0.1, ge=0, le=1)
    image_size: int | None = Field(None, ge=8)
    ema_decay: float | None = Field(0.999, gt=0, lt=1)
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    gate_items: int = Field(256, ge=1)
    gate_steps: int = Field(DEFAULT_STEPS, ge=1)
    gate_guidance: float = Field(DEFAULT_GUIDANCE, ge=0)
    threads: int = Field(1, ge=1)
    device: str = "cpu"
