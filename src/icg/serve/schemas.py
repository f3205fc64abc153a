"""What crosses the service boundary: the request body, a pipeline job and its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from icg.data.safety import CONTROL, DEFAULT_CAPS, text_problem

MAX_SEED = 2**31 - 1


class CoverRequest(BaseModel):
    """``POST /v1/covers``: one cover for a (user, item) pair.

    The user is ``user_id`` (looked up), or ``user_embedding``, or neither (cold start). The item
    is ``item_id`` (looked up), or ``title`` plus ``image`` (a base64-encoded reference image).
    """

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(None, min_length=1, max_length=DEFAULT_CAPS.max_id_chars)
    user_embedding: list[float] | None = Field(None, min_length=1, max_length=4096)
    allow_cold_start: bool = Field(
        False, description="An unknown user_id falls back to a cold-start cover instead of 404."
    )
    item_id: str | None = Field(None, min_length=1, max_length=DEFAULT_CAPS.max_id_chars)
    title: str | None = Field(None, min_length=1, max_length=DEFAULT_CAPS.max_title_chars)
    image: str | None = Field(None, description="Base64 reference image (PNG/JPEG/WEBP/BMP/GIF).")
    candidates: int = Field(1, ge=1, description="Best-of-K under the run's reward.")
    steps: int | None = Field(None, ge=1, description="Denoising steps (default: the server's).")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Default: a random seed.")
    user_guidance: float = Field(1.0, ge=0, le=10)

    @model_validator(mode="after")
    def _one_user_one_item(self) -> CoverRequest:
        if self.user_id is not None and self.user_embedding is not None:
            raise ValueError("give user_id or user_embedding, not both")
        if self.item_id is not None and (self.title is not None or self.image is not None):
            raise ValueError("give item_id, or title plus image, not both")
        if self.item_id is None and (self.title is None or self.image is None):
            raise ValueError("the item: expected item_id, or title plus image")
        if self.user_embedding is not None:
            values = np.asarray(self.user_embedding)
            cap = DEFAULT_CAPS.max_embedding_abs
            if not np.all(np.isfinite(values)) or np.abs(values).max() > cap:
                raise ValueError(
                    f"user_embedding: expected finite numbers of magnitude at most {cap:g} "
                    "(the data validation's cap)"
                )
        return self

    @field_validator("user_id", "item_id", "title")
    @classmethod
    def _no_control_characters(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Refused as data validation refuses them in tables (`icg.data.safety`)."""
        problem = text_problem(value, len(value or ""), CONTROL)  # length: the Field's check
        if problem is not None:
            raise ValueError(f"{info.field_name}: {problem[1]}")
        return value


@dataclass(frozen=True)
class Settings:
    """Sampling settings that must agree within one pipeline call."""

    steps: int
    guidance_scale: float
    user_guidance: float


@dataclass
class CoverJob:
    """One resolved request: everything the backend needs, nothing it must look up.

    Args:
        user_key: the user's id, an embedding digest, or ``""`` (cold start).
        user_embedding: ``(E,)`` float32, or ``None`` for cold start.
        item_key: the item's id or an upload digest.
        title, image: the item's title and reference image (a file, a decoded upload, or none).
        seeds: one noise seed per candidate.
        settings: sampling settings.
    """

    user_key: str
    user_embedding: np.ndarray | None
    item_key: str
    title: str
    image: Path | Image.Image | None
    seeds: list[int]
    settings: Settings

    @property
    def rows(self) -> int:
        """Pipeline rows this job takes (one per candidate)."""
        return len(self.seeds)


@dataclass
class CoverResult:
    """The chosen cover of a job and how it was chosen.

    Args:
        png: the chosen cover as PNG bytes carrying the AI-generated marker.
        candidate: index of the chosen draw; ``seeds[candidate]`` is its noise seed.
        scores: the reward of every draw (NaN without best-of-K).
    """

    png: bytes
    candidate: int
    scores: list[float] = field(default_factory=list)
