"""Every knob of CoverWorld in one typed config, loadable from YAML."""

from __future__ import annotations

import yaml
from pydantic import BaseModel, ConfigDict, Field


class WorldConfig(BaseModel):
    """CoverWorld configuration. All fields have defaults; YAML files override any subset."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    n_items: int = Field(500, ge=1)
    n_users: int = Field(200, ge=1)
    n_impressions: int = Field(50_000, ge=0)
    image_size: int = Field(64, ge=8, le=512)
    categories: list[str] = ["book", "video", "podcast", "shop"]
    # covers
    n_variants: int = Field(4, ge=1, description="cover variants per item shown on the platform")
    reference_defect_rate: float = Field(0.35, ge=0, le=1)
    variant_defect_rate: float = Field(0.2, ge=0, le=1)
    # users
    n_segments: int = Field(8, ge=1)
    taste_noise: float = Field(0.12, ge=0)
    segment_weight_concentration: float = Field(0.8, gt=0)
    embedding_dim: int = Field(32, ge=2)
    activity_dim: int = Field(8, ge=0)
    embedding_noise: float = Field(0.3, ge=0)
    cold_start_fraction: float = Field(0.15, ge=0, lt=1)
    # clicks: P(click) = exam(pos) * sigmoid(bias + w_rel*rel + w_aes*aes + w_taste*taste + pop + user)
    page_size: int = Field(10, ge=1)
    position_decay: float = Field(1.0, ge=0, description="exam(pos) = (1 + pos) ** -decay")
    legacy_brightness_bias: float = Field(
        2.0, description="the platform ranker's pull of light covers to the top positions"
    )
    bias: float = -8.0
    w_rel: float = 2.5
    w_aes: float = 2.0
    w_taste: float = 4.5
    popularity_std: float = Field(0.5, ge=0)
    user_bias_std: float = Field(0.3, ge=0)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(), sort_keys=False)
