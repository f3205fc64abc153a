"""Configuration of the `mllm` recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MllmRecipeConfig(BaseModel):
    """Hyper-parameters of the `mllm` recipe (defaults are the shipped model's, v3; v2 in
    ``docs/zoo/mllm-v2/recipe.yaml``).

    Args:
        steps: optimizer steps, each on a fresh batch of renders.
        batch_size: (cover, title, answer) examples per step.
        learning_rate: peak AdamW learning rate (cosine schedule after `warmup` steps).
        warmup: linear warm-up steps.
        weight_decay: AdamW weight decay of matrices (not of embeddings, norms or biases).
        vocab_size: BPE vocabulary size (before the special tokens).
        vision_hidden: width of the CLIP ViT.
        vision_layers: ViT layers.
        text_hidden: width of the Qwen2 decoder.
        text_layers: decoder layers.
        heads: attention heads of both towers.
        kv_heads: key/value heads of the decoder (grouped-query attention).
        checkpoint_every: steps between checkpoints.
        gate_items: fresh renders the recipe measures its gates on.
        tokenizer_titles: transcripts the BPE is trained on.
        vision_from_pretrained: LLaVA-style option: a `clip` model (``zoo:clip`` or a folder)
            whose image tower (same ViT config) starts the vision tower (the shipped model
            starts from ``zoo:clip``); None: the tower is trained from scratch.
        vision_learning_rate_scale: learning-rate multiplier of a pretrained vision tower (0:
            the tower stays as it starts).
        title_dropout: share of training examples whose title is blank, so that the motif
            must be read off the cover (CoverWorld's titles are ambiguous on purpose).
        image_dropout: share of training examples whose cover is replaced by a flat grey
            image, so that the title keeps being read too (both together beat either alone).
        vision_feature_select_strategy: LLaVA's choice of image tokens: "full" passes the
            vision tower's CLS token with the 16 patch tokens (17 image tokens), "default" the
            patch tokens only.
        vision_warmup_steps: steps before the LM training that fine-tune the vision tower alone
            as a motif classifier of its pooled (CLS) output, on `vision_warmup_batch` fresh
            renders each; the linear head is dropped afterwards (0: no warm-up).
        vision_warmup_batch: renders per warm-up step.
        vision_warmup_learning_rate: peak learning rate of the warm-up (cosine, its own
            `warmup` steps).
        init_from: a published `mllm` (``zoo:mllm`` or a folder) whose weights and processor
            start the model (its BPE is kept, not retrained; `vision_from_pretrained` and the
            size fields are then unused); None: a fresh model.
        train_text: False freezes the decoder (embeddings, layers, LM head): only the vision
            tower and the projector train, so a model started from `init_from` reads a title alone
            exactly as the init does.
        first_batch: index of the first LM batch, so that a fine-tune from `init_from` sees
            renders its init never saw (the init's recipe used batches 0..steps-1).
        threads: torch CPU threads.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(5000, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1.5e-3, gt=0)
    warmup: int = Field(60, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    vocab_size: int = Field(768, ge=1)
    vision_hidden: int = Field(96, ge=1)
    vision_layers: int = Field(3, ge=1)
    text_hidden: int = Field(128, ge=1)
    text_layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    gate_items: int = Field(300, ge=1)
    tokenizer_titles: int = Field(6_000, ge=1)
    vision_from_pretrained: str | None = "zoo:clip"
    vision_learning_rate_scale: float = Field(0.1, ge=0)
    title_dropout: float = Field(0.5, ge=0, lt=1)
    image_dropout: float = Field(0.15, ge=0, lt=1)
    vision_feature_select_strategy: Literal["default", "full"] = "full"
    vision_warmup_steps: int = Field(1500, ge=0)
    vision_warmup_batch: int = Field(64, ge=1)
    vision_warmup_learning_rate: float = Field(3e-4, gt=0)
    init_from: str | None = None
    train_text: bool = True
    first_batch: int = Field(0, ge=0)
    threads: int = Field(1, ge=1)
