"""Generator backends: what turns a batch of `CoverJob` into covers.

`PipelineBackend` wraps `ICGPipeline` and the reward the stage-B run optimised (best-of-K);
`icg.serve.testing.FakeBackend` counts calls instead, so the app's batching, caps, 429s,
deadlines and shutdown are tested in milliseconds.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from icg.data import load_dataset
from icg.models.paths import resolve_adapter_dir
from icg.pipeline import ICGPipeline
from icg.rewards.factory import load_run_reward
from icg.serve.cache import LRUCache
from icg.serve.catalog import Catalog
from icg.serve.png import encode_marked_png
from icg.serve.schemas import CoverJob, CoverResult

logger = logging.getLogger(__name__)


class CoverBackend(Protocol):
    """What the app needs from a generator.

    ``load`` runs once in a thread after the server starts (``/readyz`` answers 503 until it
    returns), unless ``catalog`` is set already (loaded before, as a Ray Serve replica does);
    ``generate`` runs in the batcher's worker thread, one call at a time, with jobs
    that share their `Settings`.
    """

    catalog: Catalog | None
    can_score: bool

    def load(self) -> None: ...

    def generate(self, jobs: list[CoverJob]) -> list[CoverResult]: ...

    def cache_counts(self) -> dict[str, tuple[int, int]]: ...


def pick_best(scores: np.ndarray) -> int:
    """Index of the best draw of best-of-K (NaN scores never win unless all are NaN)."""
    return 0 if np.all(np.isnan(scores)) else int(np.nanargmax(scores))


def png_text(job: CoverJob, candidate: int) -> dict[str, str]:
    """The PNG text chunks of a served cover (what `icg generate` records, plus the user)."""
    return {
        "method": "icg-serve",
        "seed": str(job.seeds[candidate]),
        "item_id": job.item_key,
        "user_id": job.user_key,
    }


class PipelineBackend:
    """`ICGPipeline` of a stage-B run plus its reward for best-of-K.

    Args:
        run: the run folder (``RUN/icg``) or an adapter folder.
        data: the platform data folder (users and items).
        feature_cache_size: item features kept (LRU), so the MLLM runs once per item.
    """

    def __init__(
        self, run: Path | None = None, data: Path | None = None, feature_cache_size: int = 1024
    ) -> None:
        self.run, self.data = run, data
        self.features: LRUCache = LRUCache(feature_cache_size)
        self.catalog: Catalog | None = None
        self.can_score = False
        self.pipe = None
        self.reward = None

    def load(self) -> None:
        """Load the data tables, the pipeline and (when the run has one) its reward, once."""
        if self.pipe is not None:
            return
        if self.run is None or self.data is None:
            raise ValueError("PipelineBackend.load needs run and data folders")
        with tempfile.TemporaryDirectory(prefix="icg-serve-rejects-") as rejects:
            data = load_dataset(self.data, rejects_dir=rejects, require=("items", "users"))
        pipe = ICGPipeline.from_pretrained(resolve_adapter_dir(self.run))
        reward = None
        try:
            reward = load_run_reward(self.run)
        except FileNotFoundError as err:
            logger.warning("no reward for best-of-K (candidates > 1 refused): %s", err)
        self.attach(pipe, Catalog.from_dataset(data), reward)
        logger.info("loaded %s: %d users, %d items", self.run, len(data.users), len(data.items))

    def attach(self, pipe, catalog: Catalog, reward=None) -> None:
        """Serve with a loaded `ICGPipeline`, catalogue and reward (``None``: no best-of-K).

        The pipeline keeps item features in the bounded LRU, so a long-running server's memory
        stays flat however many items it sees.
        """
        pipe.set_feature_cache(self.features)
        pipe.base.set_progress_bar_config(disable=True)
        self.reward, self.can_score, self.catalog = reward, reward is not None, catalog
        self.pipe = pipe

    def cache_counts(self) -> dict[str, tuple[int, int]]:
        """``{"features": (hits, misses)}``."""
        return {"features": (self.features.hits, self.features.misses)}

    @torch.no_grad()
    def generate(self, jobs: list[CoverJob]) -> list[CoverResult]:
        """One pipeline call for every draw of every job; best-of-K picks by the run's reward."""
        pipe = self.pipe
        if pipe is None:
            raise RuntimeError("generate before load")
        settings = jobs[0].settings
        rows = [(job, k) for job in jobs for k in range(job.rows)]
        device = pipe.denoiser.device
        generators = [torch.Generator(device=device).manual_seed(job.seeds[k]) for job, k in rows]
        users = self._user_matrix([job for job, _ in rows])  # (N, E) NaN rows: cold, or None
        images = pipe(
            [job.title for job, _ in rows],
            [job.image for job, _ in rows],
            user_embeddings=users,
            item_keys=[job.item_key for job, _ in rows],
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            user_guidance=settings.user_guidance,
            generator=generators,
            output_type="pil",
        ).images
        scores = self._scores(rows, images, users)  # (N,)
        results, start = [], 0
        for job in jobs:
            own = scores[start : start + job.rows]
            best = pick_best(own) if job.rows > 1 else 0
            png = encode_marked_png(images[start + best], **png_text(job, best))
            results.append(CoverResult(png, best, [float(s) for s in own]))
            start += job.rows
        return results

    @staticmethod
    def _user_matrix(jobs: list[CoverJob]) -> torch.Tensor | None:
        """``(N, E)`` float32 user embeddings with NaN rows for cold start; ``None`` if all cold."""
        known = [job.user_embedding for job in jobs if job.user_embedding is not None]
        if not known:
            return None
        cold = np.full_like(known[0], np.nan)
        return torch.from_numpy(
            np.stack([cold if job.user_embedding is None else job.user_embedding for job in jobs])
        )

    def _scores(
        self, rows: list[tuple[CoverJob, int]], images: list[Image.Image], users
    ) -> np.ndarray:
        """The reward of every row that belongs to a best-of-K job (NaN elsewhere): ``(N,)``,
        from the 8-bit pixels a client receives."""
        scores = np.full(len(rows), np.nan, dtype=np.float64)
        picked = [n for n, (job, _) in enumerate(rows) if job.rows > 1]
        if not picked or self.reward is None:
            return scores
        pixels = np.stack([np.asarray(images[n].convert("RGB")) for n in picked])  # (P, H, W, 3)
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0  # (P, 3, H, W)
        dim = self.catalog.embedding_dim if self.catalog else 0
        emb = users[picked] if users is not None else torch.full((len(picked), dim), torch.nan)
        known = self.catalog.users if self.catalog else {}
        user_ids = [rows[n][0].user_key if rows[n][0].user_key in known else None for n in picked]
        values, _ = self.reward(x, [rows[n][0].title for n in picked], emb, user_ids=user_ids)
        scores[picked] = values.float().cpu().numpy()
        return scores
