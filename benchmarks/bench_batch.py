"""Batch generation throughput: Ray workers, cost against plain diffusers, 10M × 100k extrapolation.

On a fixed work set (``--segments`` k-means segments × ``--items`` items of a world, one draw
each, ``pick=segment``) it measures:
  * images/s of `icg batch --engine ray` with 1 and with 2 workers (``--threads`` torch threads
    each) and the ratio; end to end (Ray start-up and model loading included) and steady
    (images over the workers' time inside partitions, divided by the workers);
  * the cost per (segment, item) of the local engine (MLLM item features, adapter, UNet, PNG
    with its marker, manifest) against a plain diffusers pipeline call at the same steps, CFG
    and batch size (the base model the adapter records, no adapter);
  * PNG bytes per cover, and an extrapolation to 10M users × 100k items: images, storage and
    compute time at the measured rate (single worker, and per 100 workers).

Rerun (an idle machine gives the numbers to publish; the README says what ran beside it):
    python benchmarks/bench_batch.py --world /work/exp/full3/world --run /work/exp/full3/run \
        --out /tmp/bench-batch --json docs/results/batch-throughput.json
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icg.batch import BatchConfig, run_batch
from icg.batch.tables import read_catalog
from icg.io import atomic_write_json

USERS, ITEMS = 10_000_000, 100_000


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--segments", type=int, default=4)
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="plain-pipeline timing repeats")
    return p


def batch_config(args, out: Path, **kw) -> BatchConfig:
    return BatchConfig(
        run=args.run, data=args.world, out=out, segments=args.segments, candidates=1,
        pairs=args.out / "pairs.parquet", pick="segment", threads=args.threads,
        batch_size=args.batch_size, partition_size=args.batch_size, **kw,
    )  # fmt: skip


def timed_batch(args, name: str, **kw) -> dict:
    out = args.out / name
    shutil.rmtree(out, ignore_errors=True)
    r = run_batch(batch_config(args, out, **kw))
    workers = kw.get("workers", 1)
    return {
        "images": r.images,
        "seconds": r.seconds,
        "images_per_s": r.images / r.seconds,
        "steady_images_per_s": r.images / (r.busy_seconds / workers),
        "png_bytes_mean": float(np.mean([p.stat().st_size for p in out.rglob("covers/*/*.png")])),
    }


def plain_diffusers(args) -> float:
    """Seconds per image of the base pipeline the adapter records, no adapter, same sampling."""
    from diffusers import DiffusionPipeline

    from icg.batch.config import resolve
    from icg.models.icg_model import ICGModel
    from icg.models.paths import resolve_model_path

    settings, _ = resolve(batch_config(args, args.out / "unused"))
    torch.set_num_threads(args.threads)
    base = ICGModel.read_config(settings.adapter)["base_model"]
    pipe = DiffusionPipeline.from_pretrained(resolve_model_path(base))
    pipe.set_progress_bar_config(disable=True)
    items, _ = read_catalog(args.world, args.out / "rejects", check_images=False)
    titles = items["title"].tolist()[: args.batch_size]
    times = []
    for r in range(args.repeats + 1):  # the first call warms up
        start = time.perf_counter()
        pipe(
            prompt=titles,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            generator=[torch.Generator().manual_seed(r * 100 + b) for b in range(len(titles))],
        )
        times.append((time.perf_counter() - start) / len(titles))
    return min(times[1:])


def extrapolate(rate: float, png_bytes: float) -> list[dict]:
    """10M users × 100k items at ``rate`` images/s per worker."""
    rows = []
    settings = [(16, 1), (64, 1), (64, 4), (256, 1), ("per user", 1)]
    for s, k in settings:
        n = (USERS if s == "per user" else s) * ITEMS * k
        seconds = n / rate
        rows.append(
            {
                "segments": s,
                "candidates": k,
                "images": n,
                "storage_tb": n * png_bytes / 1e12,
                "worker_days": seconds / 86400,
                "days_on_100_workers": seconds / 86400 / 100,
            }
        )
    return rows


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parser().parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    items, users = read_catalog(args.world, args.out / "rejects", check_images=False)
    subset = sorted(items["item_id"])[: args.items]
    pd.DataFrame(
        [(u, i) for u in sorted(users["user_id"]) for i in subset], columns=["user_id", "item_id"]
    ).to_parquet(args.out / "pairs.parquet", index=False)
    results = {
        "local": timed_batch(args, "local", engine="local"),
        "ray_1_worker": timed_batch(args, "ray1", engine="ray", workers=1, num_cpus=2),
        "ray_2_workers": timed_batch(args, "ray2", engine="ray", workers=2, num_cpus=2),
    }
    plain = plain_diffusers(args)
    local_per_image = 1 / results["local"]["steady_images_per_s"]
    report = {
        "work": f"{args.segments} segments x {args.items} items, 1 draw, batch {args.batch_size}",
        "threads_per_worker": args.threads,
        **results,
        "ratio_2_to_1_workers": results["ray_2_workers"]["steady_images_per_s"]
        / results["ray_1_worker"]["steady_images_per_s"],
        "ratio_2_to_1_workers_end_to_end": results["ray_2_workers"]["images_per_s"]
        / results["ray_1_worker"]["images_per_s"],
        "plain_diffusers_s_per_image": plain,
        "icg_batch_s_per_unit": local_per_image,
        "cost_vs_plain_diffusers": local_per_image / plain,
        "extrapolation": extrapolate(
            results["local"]["steady_images_per_s"], results["local"]["png_bytes_mean"]
        ),
        "gpu": "not measured (no GPU on this machine)",
    }
    print(json.dumps(report, indent=1))
    if args.json is not None:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
