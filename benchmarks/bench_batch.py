"""Batch generation throughput: Ray workers, cost against plain diffusers, 10M × 100k extrapolation.

On a fixed work set (``--segments`` k-means segments × ``--items`` items of a world, one draw
each, ``pick=segment``) it measures:
  * images/s of `icg batch --engine ray` with 1 and with 2 workers (``--threads`` torch threads
    each) and the ratio; end to end (Ray start-up and model loading included) and steady
    (images over the workers' time inside partitions, divided by the workers);
  * the cost per (segment, item) of one worker (MLLM item features, adapter, UNet, PNG with
    its marker, manifest) against a plain diffusers pipeline call at the same steps, CFG, batch
    size and titles (the base model the adapter records, no adapter), interleaved in one
    process, fastest of ``--repeats`` each;
  * PNG bytes per cover, and an extrapolation to 10M users × 100k items: images, storage and
    compute time at that per-worker rate (one worker, and 100 workers).

Rerun (an idle machine gives the numbers to publish; the README says what ran beside it):
    python benchmarks/bench_batch.py --world demo-out/world --run demo-out/run \
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
    p.add_argument("--repeats", type=int, default=5, help="interleaved cost repeats")
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


def cost_against_plain(args) -> dict:
    """Seconds per image of `CoverWorker` partitions (one pipeline call each: MLLM features of
    new items, adapter, UNet, PNG with its marker, manifest part) and of the plain diffusers
    pipeline the adapter records (no adapter, same steps, CFG, batch and titles), interleaved
    in one process; the fastest repeat of each (the least disturbed by other load)."""
    from diffusers import DiffusionPipeline

    from icg.batch.config import resolve
    from icg.batch.plan import partition_units, plan_partitions
    from icg.batch.run import plan_batch
    from icg.batch.worker import CoverWorker
    from icg.models.icg_model import ICGModel
    from icg.models.paths import resolve_model_path

    config = batch_config(args, args.out / "cost", engine="local")
    shutil.rmtree(config.out, ignore_errors=True)
    settings, _ = resolve(config)
    plan_batch(config, pick=False)
    worker = CoverWorker(config.out, settings.model_dump())
    base = ICGModel.read_config(settings.adapter)["base_model"]
    plain = DiffusionPipeline.from_pretrained(resolve_model_path(base))
    plain.set_progress_bar_config(disable=True)
    icg_times, plain_times = [], []
    for r, partition in enumerate(plan_partitions(config.out)[: args.repeats]):
        titles = partition_units(config.out, partition)["title"].tolist()
        start = time.perf_counter()
        plain(
            prompt=titles,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            generator=[torch.Generator().manual_seed(r * 100 + b) for b in range(len(titles))],
        )
        plain_times.append((time.perf_counter() - start) / len(titles))
        _, images, seconds = worker.run_partition(partition)
        icg_times.append(seconds / images)
    return {
        "repeats": len(icg_times),
        "icg_batch_s_per_unit": min(icg_times),
        "plain_diffusers_s_per_image": min(plain_times),
        "cost_vs_plain_diffusers": min(icg_times) / min(plain_times),
        "icg_batch_s_per_unit_all": icg_times,
        "plain_diffusers_s_per_image_all": plain_times,
    }


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
    torch.set_num_threads(args.threads)
    cost = cost_against_plain(args)
    rate = 1 / cost["icg_batch_s_per_unit"]  # images/s of one worker
    report = {
        "work": f"{args.segments} segments x {args.items} items, 1 draw, batch {args.batch_size}",
        "threads_per_worker": args.threads,
        **results,
        "ratio_2_to_1_workers": results["ray_2_workers"]["steady_images_per_s"]
        / results["ray_1_worker"]["steady_images_per_s"],
        "ratio_2_to_1_workers_end_to_end": results["ray_2_workers"]["images_per_s"]
        / results["ray_1_worker"]["images_per_s"],
        **cost,
        "extrapolation_rate_images_per_s": rate,
        "extrapolation": extrapolate(rate, results["local"]["png_bytes_mean"]),
        "gpu": "not measured (no GPU on this machine)",
    }
    print(json.dumps(report, indent=1))
    if args.json is not None:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
