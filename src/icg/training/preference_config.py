"""`PreferenceConfig`: the validated hyper-parameters of `icg train preference`
(`icg.training.preference`), in a module of their own as stage B's are (`reward_config`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from icg.config import DEFAULT_CLIP


class PreferenceConfig(BaseModel):
    """Hyper-parameters of `icg train preference` (YAML files override any subset)."""

    model_config = ConfigDict(extra="forbid")

    clip: str = DEFAULT_CLIP
    source: Literal["auto", "impressions", "feedback"] = "auto"
    negatives_per_positive: int = Field(4, ge=1)
    debias: Literal["pbm", "ips", "none"] = "pbm"
    propensities: list[float] | None = Field(
        None, description="IPS: known examination per position; None: estimated by a PBM fit"
    )
    ips_clip: float = Field(0.05, gt=0, le=1)
    num_positions: int | None = Field(None, ge=1, description="default: max logged position + 1")
    rank: int = Field(32, ge=1)
    hidden_dim: int = Field(128, ge=1)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(8192, ge=1)
    learning_rate: float = Field(2e-2, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay of the linear maps")
    examination_lr_scale: float = Field(
        5.0, gt=0, description="the examination parameters learn this much faster"
    )
    table_l2: float = Field(1e-4, ge=0, description="L2 on per-user vectors and item biases")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    embed_batch_size: int = Field(256, ge=1)
    log_half: int | None = Field(
        None, ge=0, le=1, description="fit on one half of the click log only (0 or 1, by a "
        "stable hash of the event: icg.training.log_split), e.g. the tripwire's held-out model",
    )  # fmt: skip
    cover_encoder: Literal["clip", "conv", "patches", "spectrum"] = "clip"  # models.preference
    pixel_size: int = Field(64, ge=8, description="conv, spectrum: side of the pixel input")
    patch_layer: int = Field(-1, description="patches: CLIP vision hidden layer (-1: last)")
    encoder_width: int = Field(16, ge=1, description="width of the cover encoder's features")
    spectrum_bins: tuple[int, int] = Field((12, 8), description="spectrum: bands, orientations")
