"""`ServeConfig`: every knob of `icg serve`, validated before anything loads.

Caps bound what one request may cost (body bytes, candidates, steps, upload pixels); the queue,
batch and deadline bound what the server holds at once. The bind check lives here too, so a
server can never be configured to listen beyond loopback without an API key.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from icg.config import DEFAULT_GUIDANCE, DEFAULT_STEPS
from icg.serve.auth import is_loopback


class ServeConfig(BaseModel):
    """Configuration of the cover service.

    Args:
        run: a stage-B run folder (``RUN/icg``: ``adapter/``, ``config.yaml``,
            ``reward_stats.safetensors``).
        data: the platform data folder (users and items tables).
        host, port: where uvicorn listens; a non-loopback host needs ``api_key``.
        api_key: the bearer token clients must send; ``None`` disables auth (loopback only).
        max_body_bytes: the largest request body (413 above).
        max_candidates, max_steps: caps on best-of-K and denoising steps (422 above).
        max_image_pixels: the largest uploaded reference image, width × height (413 above).
        default_steps, guidance_scale: sampling when a request names no steps; CFG scale.
        max_batch: rows (requests × candidates) per pipeline call.
        batch_wait_ms: how long the batcher waits for more compatible requests.
        queue_size: requests waiting for the pipeline; a full queue answers 429 at once.
        deadline_s: a request's wall-clock budget, queueing included (504 past it).
        feature_cache_size, result_cache_size: entries of the item feature and result LRUs.
        shutdown_grace_s: the one grace period of a shutdown: running calls finish within it,
            whatever cannot gets a JSON 503 with ``Retry-After``.
        header_timeout_s: a connection must send a request's headers within this (else it is
            closed with 408), also between requests on a kept-alive connection.
        body_timeout_s: the whole body must arrive within this after the headers (408).
        max_connections: open connections; one more is answered 503 JSON and closed.
        max_error_items: validation errors listed in a 422 (the rest are counted).
    """

    model_config = ConfigDict(extra="forbid")

    run: Path | None = None
    data: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    max_candidates: int = Field(4, ge=1)
    max_steps: int = Field(50, ge=1)
    max_image_pixels: int = Field(4_000_000, ge=64)
    default_steps: int = Field(DEFAULT_STEPS, ge=1)
    guidance_scale: float = Field(DEFAULT_GUIDANCE, ge=0)
    max_batch: int = Field(8, ge=1)
    batch_wait_ms: float = Field(10.0, ge=0)
    queue_size: int = Field(32, ge=1)
    deadline_s: float = Field(60.0, gt=0)
    feature_cache_size: int = Field(1024, ge=1)
    result_cache_size: int = Field(256, ge=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    max_connections: int = Field(128, ge=2)
    max_error_items: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        if self.api_key is not None and not self.api_key.get_secret_value().strip():
            raise ValueError("api_key: expected a non-empty token")
        if not is_loopback(self.host) and self.api_key is None:
            raise ValueError(
                f"host={self.host!r} listens beyond loopback: set ICG_API_KEY or --api-key-file, "
                "or bind to 127.0.0.1"
            )
        if self.default_steps > self.max_steps:
            raise ValueError(
                f"default_steps={self.default_steps}: expected at most max_steps={self.max_steps}"
            )
        if self.max_candidates > self.max_batch:
            raise ValueError(
                f"max_candidates={self.max_candidates}: expected at most "
                f"max_batch={self.max_batch} (one request's draws share one pipeline call)"
            )
        if self.feature_cache_size < self.max_batch:
            raise ValueError(
                f"feature_cache_size={self.feature_cache_size}: expected at least "
                f"max_batch={self.max_batch} (one call's items must fit at once)"
            )
        return self
