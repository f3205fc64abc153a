"""`CoverService`: a request in, a cover out, with caps, the result cache, the batcher and the
deadline; HTTP framing lives in `icg.serve.app`."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from icg.serve.backend import CoverBackend
from icg.serve.batcher import (
    Arrival,
    DeadlineExceeded,
    MicroBatcher,
    QueueFull,
    ShuttingDown,
)
from icg.serve.cache import LRUCache
from icg.serve.catalog import resolve
from icg.serve.config import ServeConfig
from icg.serve.errors import APIError
from icg.serve.metrics import ServeMetrics
from icg.serve.schemas import MAX_SEED, CoverJob, CoverRequest, CoverResult, Settings

logger = logging.getLogger(__name__)


@dataclass
class ServedCover:
    """A cover and the facts its response reports.

    Args:
        result: the chosen cover.
        job: the resolved request (keys, seeds, settings).
        seed: the request's base seed (chosen at random when the request named none).
        cached: whether it came from the result cache.
    """

    result: CoverResult
    job: CoverJob
    seed: int
    cached: bool

    def manifest(self) -> dict:
        """The manifest fields of the JSON response (as `icg generate`'s manifest records)."""
        job, result = self.job, self.result
        return {
            "user_id": job.user_key,
            "item_id": job.item_key,
            "cold_start": job.user_embedding is None,
            "seed": self.seed,
            "draw_seed": job.seeds[result.candidate],
            "candidate": result.candidate,
            "scores": [None if s != s else s for s in result.scores],  # NaN → null
            "settings": {
                "steps": job.settings.steps,
                "guidance_scale": job.settings.guidance_scale,
                "user_guidance": job.settings.user_guidance,
                "candidates": job.rows,
            },
            "cached": self.cached,
        }


class CoverService:
    """Serves `CoverRequest`s through a `CoverBackend`.

    Args:
        config: caps, queue, batching and deadline settings.
        backend: the generator (loaded in a thread by :meth:`start`).
    """

    def __init__(self, config: ServeConfig, backend: CoverBackend) -> None:
        self.config = config
        self.backend = backend
        self.results: LRUCache[tuple, CoverResult] = LRUCache(config.result_cache_size)
        self.metrics = ServeMetrics(lambda: self.batcher.queue_depth, self.cache_counts)
        self.batcher: MicroBatcher[CoverJob, CoverResult] = MicroBatcher(
            backend.generate,
            key=lambda job: job.settings,
            rows=lambda job: job.rows,
            max_batch=config.max_batch,
            max_wait_s=config.batch_wait_ms / 1000,
            queue_size=config.queue_size,
            on_batch=self.metrics.observe_batch,
        )
        self.ready = False
        self.load_error: str | None = None
        self._loading: asyncio.Task | None = None

    def cache_counts(self) -> dict[str, tuple[int, int]]:
        """Hits and misses of every cache."""
        return {**self.backend.cache_counts(), "results": (self.results.hits, self.results.misses)}

    async def start(self) -> None:
        """Start the batcher and load the backend in the background; ready at once when the
        backend is loaded already (a Ray Serve replica loads it before it takes requests)."""
        self.batcher.start()
        if self.backend.catalog is not None:
            self.ready = True
            return
        self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        try:
            await asyncio.to_thread(self.backend.load)
        except Exception as err:
            logger.exception("loading the backend failed")
            self.load_error = f"loading failed: {type(err).__name__}"
            return
        self.ready = True
        logger.info("ready")

    async def drain(self) -> None:
        """Refuse new requests (503) and finish queued and running ones within the grace
        period; what cannot finish gets `ShuttingDown` (503 with ``Retry-After``)."""
        self.ready = False
        await self.batcher.close(self.config.shutdown_grace_s)

    async def stop(self) -> None:
        """`drain` (at once when a server drained already), then stop loading."""
        await self.drain()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()

    def settings(self, request: CoverRequest) -> Settings:
        """The request's sampling settings, within the caps.

        Raises:
            APIError: 422 naming the capped field, its value and the limit.
        """
        cfg = self.config
        steps = request.steps if request.steps is not None else cfg.default_steps
        if steps > cfg.max_steps:
            raise APIError(422, "over_limit", f"steps={steps}: expected at most {cfg.max_steps}")
        if request.candidates > cfg.max_candidates:
            raise APIError(
                422, "over_limit",
                f"candidates={request.candidates}: expected at most {cfg.max_candidates}",
            )  # fmt: skip
        if request.candidates > 1 and not self.backend.can_score:
            raise APIError(422, "invalid_request", "candidates > 1: this run has no reward")
        return Settings(steps, cfg.guidance_scale, request.user_guidance)

    async def cover(
        self, request: CoverRequest, budget_s: float, arrival: Arrival | None = None
    ) -> ServedCover:
        """The cover of a request within ``budget_s`` seconds (``arrival``: from
        `MicroBatcher.arriving`, closed once the job is queued).

        Raises:
            APIError: 404 unknown user or item; 413/422 caps and bad uploads; 429 queue full
                (with ``Retry-After``); 503 not ready or shutting down; 504 deadline.
        """
        settings = self.settings(request)
        catalog = self.backend.catalog
        if self.batcher.closing:
            raise APIError(
                503, "shutting_down", "the server is shutting down", {"Retry-After": "5"}
            )
        if not self.ready or catalog is None:
            detail = self.load_error or "models are still loading"
            raise APIError(503, "not_ready", detail, {"Retry-After": "5"})
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        args = (catalog, request, settings, seed, self.config.max_image_pixels)
        if request.image is None:  # look-ups only: no thread hop
            job = resolve(*args)
        else:  # an upload is decoded off the event loop
            job = await run_in_threadpool(resolve, *args)
        key = (job.user_key, job.item_key, tuple(job.seeds), settings)
        cached = self.results.get(key)
        if cached is not None:
            return ServedCover(cached, job, seed, cached=True)
        try:
            result = await self.batcher.submit(job, budget_s, arrival)
        except QueueFull as err:
            self.metrics.rejected.inc()
            raise APIError(
                429, "queue_full", f"{self.config.queue_size} requests are already waiting",
                {"Retry-After": str(err.retry_after)},
            ) from err  # fmt: skip
        except ShuttingDown as err:
            raise APIError(503, "shutting_down", str(err), {"Retry-After": "5"}) from err
        except DeadlineExceeded as err:
            raise APIError(504, "deadline_exceeded", str(err)) from err
        self.results[key] = result
        return ServedCover(result, job, seed, cached=False)
