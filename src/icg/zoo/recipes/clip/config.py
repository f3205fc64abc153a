"""Configuration of the `clip` recipe."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClipRecipeConfig(BaseModel):
    """Hyper-parameters of the `clip` recipe (defaults are the shipped model's).

    Args:
        steps: optimizer steps, each on a fresh batch of renders.
        batch_size: (text, cover) pairs per step.
        learning_rate: peak AdamW learning rate (cosine schedule after `warmup` steps).
        warmup: linear warm-up steps.
        weight_decay: AdamW weight decay of matrices (not of embeddings, norms or biases).
        vocab_size: BPE vocabulary size.
        vision_hidden: width of the ViT.
        patch_size: ViT patch edge; 16 gives 16 image tokens at 64px, few enough that a tiny ViT
            learns motif shape quickly.
        vision_layers: ViT layers.
        text_layers: text transformer layers (its width is fixed at 64, see `TEXT_HIDDEN`).
        heads: attention heads of both towers.
        projection_dim: width of the shared embedding.
        checkpoint_every: steps between checkpoints.
        gate_items: fresh renders the recipe measures its gates on.
        tokenizer_titles: zoo titles (and as many generated texts) the BPE is trained on.
        class_prompt_weight: weight of the class-prompt loss beside the contrastive loss.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(6000, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    warmup: int = Field(100, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    vocab_size: int = Field(1024, ge=1)
    vision_hidden: int = Field(96, ge=1)
    patch_size: int = Field(16, ge=1)
    vision_layers: int = Field(3, ge=1)
    text_layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    projection_dim: int = Field(64, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    gate_items: int = Field(1000, ge=1)
    tokenizer_titles: int = Field(8_000, ge=1)
    class_prompt_weight: float = Field(2.0, ge=0)
