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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import Row, print_table  # noqa: E402
from model_fixtures import dummy_image, perturb_, tiny_icg  # noqa: E402

from icg.pipeline import ICGPipeline  # noqa: E402


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--items", type=int, default=8)
    return parser


def measure(args: argparse.Namespace) -> list[Row]:
    """Per-image time of ICGPipeline (warm and cold item cache) and of a user x item grid,
    against the plain diffusers pipeline at equal steps and batch."""
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
    plain_case = f"plain diffusers, batch {args.batch}, {args.steps} steps, CFG"
    rows = [
        Row("pipeline", plain_case, per(t_plain), "ms/image"),
        Row(
            "pipeline",
            "ICG, warm item cache",
            per(t_warm),
            "ms/image",
            plain_case,
            t_warm / t_plain,
        ),
        Row(
            "pipeline",
            "ICG, cold item cache",
            per(t_cold),
            "ms/image",
            plain_case,
            t_cold / t_plain,
        ),
    ]
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
    grid_case = f"ICG grid {args.users} users x {args.items} items"
    rows.append(
        Row(
            "pipeline",
            grid_case,
            1000 * t_grid / n,
            "ms/cover",
            plain_case,
            1000 * t_grid / n / per(t_plain),
        )
    )
    rows.append(
        Row(
            "pipeline",
            f"{grid_case}: MLLM item forwards",
            pipe.items_encoded,
            "forwards",
            f"{n} covers",
            pipe.items_encoded / n,
        )
    )
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print_table(measure(parser().parse_args()), "bench_pipeline")
