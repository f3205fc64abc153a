"""Renderer and world-generation throughput (prints rates and ratios; not a test)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import Row, print_table  # noqa: E402

from icg.world.config import WorldConfig  # noqa: E402
from icg.world.generate import generate_world  # noqa: E402
from icg.world.render import render  # noqa: E402
from icg.world.sampling import random_spec  # noqa: E402


def covers_per_second(size: int, n: int = 2000) -> float:
    rng = np.random.default_rng(0)
    specs = [random_spec(rng, defect_rate=0.3) for _ in range(n)]
    start = time.perf_counter()
    for s in specs:
        render(s, size)
    return n / (time.perf_counter() - start)


def measure() -> list[Row]:
    """Render rate per size against 64 px (one core), and the time to generate a world."""
    import torch

    torch.set_num_threads(1)
    base = covers_per_second(64)
    rows = [Row("world", "render 64 px", base, "covers/s")]
    for size in (128, 256, 512):
        rate = covers_per_second(size, n=200)
        rows.append(
            Row("world", f"render {size} px", rate, "covers/s", "render 64 px", rate / base)
        )
    small = generate_seconds(5_000)
    rows.append(Row("world", "generate 500 items x 200 users x 5k impressions", small, "s"))
    seconds = generate_seconds(50_000)
    rows.append(
        Row(
            "world",
            "generate 500 items x 200 users x 50k impressions",
            seconds,
            "s",
            "generate 500 items x 200 users x 5k impressions",
            seconds / small,
        )  # fmt: skip
    )  # the ratio: what 10x the impressions costs (rendering is per cover, not per impression)
    return rows


def generate_seconds(n_impressions: int) -> float:
    """Seconds to generate a 500-item, 200-user world with ``n_impressions``."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cfg = WorldConfig(n_items=500, n_users=200, n_impressions=n_impressions, seed=3)
        generate_world(Path(tmp) / "w", cfg)
        return time.perf_counter() - start


if __name__ == "__main__":
    print_table(measure(), "bench_world")
