"""Renderer and world-generation throughput (prints rates and ratios; not a test)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from icg.world.config import WorldConfig
from icg.world.generate import generate_world
from icg.world.render import render
from icg.world.sampling import random_spec


def covers_per_second(size: int, n: int = 2000) -> float:
    rng = np.random.default_rng(0)
    specs = [random_spec(rng, defect_rate=0.3) for _ in range(n)]
    start = time.perf_counter()
    for s in specs:
        render(s, size)
    return n / (time.perf_counter() - start)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    base = covers_per_second(64)
    print(f"render 64px: {base:,.0f} covers/s on one core (target >= 1,000)")
    for size in (128, 256, 512):
        rate = covers_per_second(size, n=200)
        print(f"render {size}px: {rate:,.0f} covers/s ({rate / base:.3f}x of 64px)")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_world(
            Path(tmp) / "w", WorldConfig(n_items=500, n_users=200, n_impressions=50_000, seed=3)
        )
        print(f"world 500 items x 200 users x 50k impressions: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
