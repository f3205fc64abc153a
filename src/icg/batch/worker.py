"""`CoverWorker`: draws whole partitions of (segment, item) units with one `ICGPipeline`.

The same class runs as a Ray Data actor (``map_batches(CoverWorker, compute=ActorPoolStrategy)``)
and, in the local engine, as a plain object in this process: one per-batch code path. Draw k of
(segment, item) always starts from ``pair_seed(seed, segment key, item_id, k)`` with its own
generator, so a cover depends neither on the batch it is drawn in nor on the worker.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from icg.batch.config import Resolved
from icg.batch.manifest import part_path, write_part
from icg.batch.plan import cover_parts, cover_path, load_segments, partition_units
from icg.generation import draw_covers, pair_seed, save_generated_png
from icg.pipeline import ICGPipeline
from icg.rewards import PreferenceReward
from icg.rewards.factory import load_run_reward
from icg.safety import output_path, safe_name

logger = logging.getLogger(__name__)

METHOD = "icg-batch"


def load_candidate_reward(settings: Resolved):
    """The reward that keeps a segment's best candidate (``None`` for one draw): the run's own
    (`load_run_reward`) or the preference model's attractiveness logit."""
    if settings.scorer == "run":
        return load_run_reward(settings.scorer_path)
    if settings.scorer == "preference":
        return PreferenceReward(settings.scorer_path).eval()
    return None


def read_cover(path: Path) -> Image.Image | None:
    """A cover written before, decoded as RGB; None when it is missing or does not decode
    (empty, truncated: it is drawn again)."""
    if not path.is_file():
        return None
    try:
        with Image.open(path, formats=("PNG",)) as im:
            return im.convert("RGB")
    except Exception as err:  # noqa: BLE001 - any failure means the cover is drawn again
        logger.warning("%s: unreadable cover (%s), drawn again", path, type(err).__name__)
        return None


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL covers → ``(B, 3, H, W)`` float in [0, 1] (what rewards read)."""
    x = np.stack([np.asarray(im.convert("RGB")) for im in images])  # (B, H, W, 3) uint8
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0


class CoverWorker:
    """Draws, scores and records partitions of a batch plan.

    Args:
        out: the batch output folder (holds ``plan/``; covers and manifest parts go there).
        settings: a `Resolved` as a dict (what Ray ships to each actor).
        pipe: an `ICGPipeline` to use instead of loading ``settings.adapter`` (tests, one
            process).
    """

    def __init__(self, out: str | Path, settings: dict, pipe=None) -> None:
        self.out = Path(out)
        self.settings = Resolved(**settings)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        if pipe is None:
            pipe = ICGPipeline.from_pretrained(self.settings.adapter)
            pipe.base.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.reward = load_candidate_reward(self.settings)
        # every segment's embedding (S, E); units are read per partition, never all at once
        self.embeddings = torch.from_numpy(load_segments(self.out).embeddings())
        self.images_drawn = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data entry point: run every partition in ``batch["partition"]``."""
        stats = [self.run_partition(int(p)) for p in batch["partition"]]
        return {
            "partition": np.asarray([int(p) for p in batch["partition"]], dtype=np.int64),
            "units": np.asarray([s[0] for s in stats], dtype=np.int64),
            "images": np.asarray([s[1] for s in stats], dtype=np.int64),
            "seconds": np.asarray([s[2] for s in stats], dtype=np.float64),
        }

    def run_partition(self, partition: int) -> tuple[int, int, float]:
        """Draw (or read back) every candidate of the partition's units, keep each unit's best,
        write the manifest part. Returns ``(units, images drawn, seconds)``; a finished
        partition is skipped (0 images)."""
        start = time.perf_counter()
        units = partition_units(self.out, partition)
        if part_path(self.out, partition).is_file():
            return len(units), 0, 0.0
        n_cand = self.settings.candidates
        draws = [(row, c) for row in units.itertuples(index=False) for c in range(n_cand)]
        scores = np.full(len(draws), np.nan)  # (N*K,) in unit-major order
        step, drawn = self.settings.batch_size, 0
        for begin in range(0, len(draws), step):  # one chunk in memory at a time
            chunk = draws[begin : begin + step]
            images = self._draw_or_read(chunk)
            drawn += sum(image is not None for image, _ in images)
            if self.reward is not None:
                scores[begin : begin + len(chunk)] = self._score(chunk, [im for _, im in images])
        self.images_drawn += drawn
        scores = scores.reshape(len(units), n_cand)  # (N, K)
        best = np.zeros(len(units), dtype=np.int64)
        if self.reward is not None:
            best = np.nanargmax(scores, axis=1)
        rows = pd.DataFrame(
            {
                "unit": units["unit"].to_numpy(),
                "segment": units["segment"].to_numpy(),
                "segment_key": units["key"].to_numpy(),
                "item_id": units["item_id"].to_numpy(),
                "path": [
                    cover_path(s, i, k)
                    for s, i, k in zip(units["segment"], units["item_id"], best, strict=True)
                ],
                "candidate": best,
                "seed": [
                    pair_seed(self.settings.seed, key, i, int(k))
                    for key, i, k in zip(units["key"], units["item_id"], best, strict=True)
                ],
                "score": scores[np.arange(len(units)), best],
                "scores": list(scores),
            }
        )
        write_part(self.out, partition, rows)
        return len(units), drawn, time.perf_counter() - start

    def _draw_or_read(self, chunk: list) -> list[tuple[Image.Image | None, Image.Image]]:
        """Each (unit row, candidate)'s cover: ``(new image or None, image)``.

        When every cover of the chunk is on disk and decodes (drawn before a kill or a full
        disk, written atomically), they are read back. Otherwise the whole chunk is drawn again,
        as the first run drew it: a UNet call's numerics depend on its batch, so drawing only
        the missing rows could change a colour level, and a resumed run must write the same
        bytes as an uninterrupted one.
        """
        paths = [output_path(self.out, *cover_parts(r.segment, r.item_id, c)) for r, c in chunk]
        on_disk = [read_cover(path) for path in paths]
        if all(image is not None for image in on_disk):
            return [(None, image) for image in on_disk]
        seeds = [pair_seed(self.settings.seed, r.key, r.item_id, c) for r, c in chunk]
        images = draw_covers(
            self.pipe,
            [r.title for r, _ in chunk],
            [r.image for r, _ in chunk],
            [r.item_id for r, _ in chunk],
            self.embeddings[[r.segment for r, _ in chunk]],  # (B, E)
            seeds,
            self.settings.num_inference_steps,
            self.settings.guidance_scale,
            user_guidance=self.settings.user_guidance,
        )
        for (r, _), path, image, seed in zip(chunk, paths, images, seeds, strict=True):
            meta = {"seed": str(seed), "item_id": safe_name(r.item_id), "segment": str(r.segment)}
            save_generated_png(image, path, method=METHOD, **meta)
        return [(image, image) for image in images]

    @torch.no_grad()
    def _score(self, chunk: list, images: list[Image.Image]) -> np.ndarray:
        """Each (unit row, candidate)'s reward at its segment's embedding: (B,)."""
        x = to_tensor(images)  # (B, 3, H, W)
        users = self.embeddings[[r.segment for r, _ in chunk]]  # (B, E)
        values, _ = self.reward(x, [r.title for r, _ in chunk], users)
        return values.float().numpy()
