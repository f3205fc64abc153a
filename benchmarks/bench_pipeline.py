"""ICGPipeline overhead versus the plain diffusers pipeline (a script that prints ratios).

Uses the tiny random components of the tests (CPU). Reports:
  * per-image time of ICGPipeline (warm item cache, and cold) / plain StableDiffusionPipeline,
    at equal steps and batch;
  * MLLM item forwards and wall time for a 32-user × 8-item grid.

Run: .venv/bin/python benchmarks/bench_pipeline.py [--steps 4] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from model_fixtures import dummy_image, perturb_, tiny_icg  # noqa: E402

from icg.pipeline import ICGPipeline  # noqa: E402

logger = logging.getLogger("bench_pipeline")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--items", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)

    base, model = tiny_icg()
    perturb_(model)
    base.set_progress_bar_config(disable=True)
    kw = dict(
        num_inference_steps=args.steps, guidance_scale=5.0, height=32, width=32, output_type="pt"
    )
    titles = [f"red cat story {i}" for i in range(args.batch)]
    images = [dummy_image(i) for i in range(args.batch)]
    users = torch.randn(args.batch, 6)

    def plain():  # the stock pipeline with its original attention processors
        pipe.remove_adapter()
        try:
            base(titles, generator=torch.Generator().manual_seed(0), **kw)
        finally:
            pipe.model.adapter.install(base.unet)

    pipe = ICGPipeline(base, model)

    def warm():
        pipe(
            titles, images, user_embeddings=users, generator=torch.Generator().manual_seed(0), **kw
        )

    def cold():
        pipe.clear_cache()
        warm()

    warm()  # fill the cache
    # interleave the three measurements so that load from other processes hits them alike
    t_plain = t_warm = t_cold = float("inf")
    for _ in range(args.repeats):
        t_plain = min(t_plain, _best(plain, 1))
        t_warm = min(t_warm, _best(warm, 1))
        t_cold = min(t_cold, _best(cold, 1))
    per = lambda t: 1000 * t / args.batch  # noqa: E731
    logger.info("per image (ms), batch %d, %d steps, CFG on:", args.batch, args.steps)
    logger.info("  plain diffusers        %8.1f", per(t_plain))
    logger.info("  ICG warm item cache    %8.1f   ratio %.2fx", per(t_warm), t_warm / t_plain)
    logger.info("  ICG cold item cache    %8.1f   ratio %.2fx", per(t_cold), t_cold / t_plain)

    pipe.clear_cache()
    pipe.items_encoded = pipe.mllm_calls = 0
    grid_titles = [f"blue sea tale {i}" for i in range(args.items)]
    grid_images = [dummy_image(100 + i) for i in range(args.items)]
    start = time.perf_counter()
    grid = pipe.generate_grid(
        grid_titles, grid_images, user_embeddings=torch.randn(args.users, 6), seed=0, **kw
    )
    t_grid = time.perf_counter() - start
    n = sum(len(row) for row in grid)
    logger.info(
        "grid %d users x %d items: %d covers, %d MLLM item forwards in %d batched calls, "
        "%.2f s wall (%.1f ms/cover; plain diffusers %.1f ms/image)",
        args.users,
        args.items,
        n,
        pipe.items_encoded,
        pipe.mllm_calls,
        t_grid,
        1000 * t_grid / n,
        per(t_plain),
    )


if __name__ == "__main__":
    main()
