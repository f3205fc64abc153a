"""A counting fake backend for the service tests (ours and other packages'): no models, tiny
deterministic PNGs, and knobs for slowness and failure."""

from __future__ import annotations

import threading
import time

import numpy as np
from PIL import Image

from icg.serve.backend import pick_best, png_text
from icg.serve.catalog import Catalog, Item
from icg.serve.png import encode_marked_png
from icg.serve.schemas import CoverJob, CoverResult


def tiny_catalog(n_users: int = 3, n_items: int = 3, dim: int = 4) -> Catalog:
    """Users ``u0..``, items ``i0..`` (no reference images), embeddings of length ``dim``."""
    rng = np.random.default_rng(0)
    users = {f"u{k}": rng.standard_normal(dim).astype(np.float32) for k in range(n_users)}
    items = {f"i{k}": Item(f"Item {k}", None) for k in range(n_items)}
    return Catalog(users, items, dim)


class FakeBackend:
    """Records every ``generate`` call; a cover's pixels are a colour derived from its seed.

    Args:
        catalog: what requests may name (default `tiny_catalog`).
        delay_s: how long each call blocks (to fill queues and pass deadlines).
        load_s: how long ``load`` blocks.
        fail: raise from ``generate`` (to check that no traceback reaches a client).
    """

    def __init__(
        self,
        catalog: Catalog | None = None,
        delay_s: float = 0.0,
        load_s: float = 0.0,
        fail: bool = False,
    ) -> None:
        self._catalog = catalog or tiny_catalog()
        self.catalog: Catalog | None = None
        self.can_score = True
        self.delay_s, self.load_s, self.fail = delay_s, load_s, fail
        self.calls: list[list[CoverJob]] = []
        self.completed = 0
        self.release = threading.Event()  # set to end every delay early
        self._lock = threading.Lock()

    def load(self) -> None:
        time.sleep(self.load_s)
        self.catalog = self._catalog

    def cache_counts(self) -> dict[str, tuple[int, int]]:
        return {"features": (0, 0)}

    def generate(self, jobs: list[CoverJob]) -> list[CoverResult]:
        with self._lock:
            self.calls.append(list(jobs))
        if self.delay_s:
            self.release.wait(self.delay_s)
        if self.fail:
            raise RuntimeError("fake pipeline failure with a secret path /srv/secret")
        results = []
        for job in jobs:
            scores = np.array([(s % 1000) / 1000.0 for s in job.seeds])
            best = pick_best(scores)
            colour = tuple(int(job.seeds[best] >> shift & 255) for shift in (0, 8, 16))
            png = encode_marked_png(Image.new("RGB", (8, 8), colour), **png_text(job, best))
            results.append(CoverResult(png, best, scores.tolist()))
        with self._lock:
            self.completed += len(jobs)
        return results
