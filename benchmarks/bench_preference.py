"""Benchmark: the preference model on 1M CoverWorld impressions with cached cover embeddings.

    python benchmarks/bench_preference.py --world /tmp/bench_world --impressions 1000000

Generates the world once (reused when present), embeds every cover once through the
safetensors cache, then times the fit alone and reports validation AUC beside the
Bayes-optimal AUC (truth p_click on the same events) and the taste ranking of the debiased and
naive models. Aim: fit <= 60 s on two cores, AUC within 0.01 of Bayes. Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import Row, print_table  # noqa: E402


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("/tmp/icg_bench_world"))
    parser.add_argument("--impressions", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clip", default="zoo:clip", help="falls back to a tiny random CLIP")
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML PreferenceConfig (the flags below win)"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--cover-encoder",
        default=None,
        choices=["clip", "conv", "patches", "spectrum"],
        help="what the model reads of a cover (default: PreferenceConfig's)",
    )
    parser.add_argument("--naive", action="store_true", help="also fit the naive model")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    return parser


def measure(args: argparse.Namespace) -> list[Row]:
    """Fit time and validation AUC against the Bayes-optimal AUC (and the naive model's)."""
    torch.set_num_threads(args.threads)

    from icg.config import load_config
    from icg.evaluation.preference_eval import evaluate_preference_run
    from icg.rewards.clip import ClipTowers
    from icg.rewards.testing import tiny_clip
    from icg.training.click_log import load_preference_data
    from icg.training.preference import PreferenceConfig, fit_preference
    from icg.world.config import WorldConfig
    from icg.world.generate import generate_world

    if not (args.world / "impressions.parquet").is_file():
        t = time.perf_counter()
        cfg = WorldConfig(
            n_items=args.items, n_users=args.users, n_impressions=args.impressions, seed=args.seed
        )
        generate_world(args.world, cfg, overwrite=True)
        print(f"world generated in {time.perf_counter() - t:.1f}s")
    try:
        towers, clip_name = ClipTowers.from_pretrained(args.clip), args.clip
    except (FileNotFoundError, KeyError, OSError, ValueError):
        towers, clip_name = tiny_clip(image_size=64), "tiny random CLIP (zoo:clip absent)"
    overrides = {"epochs": args.epochs, "cover_encoder": args.cover_encoder}
    cfg = load_config(PreferenceConfig, args.config, **overrides)
    cache = args.world.parent / f"{args.world.name}_{cfg.cover_encoder}_cache.safetensors"
    t = time.perf_counter()
    data = load_preference_data(args.world, cfg, towers=towers, cache_file=cache)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    data = load_preference_data(args.world, cfg, towers=towers, cache_file=cache)
    cached_s = time.perf_counter() - t
    rows = {}
    for mode in ["pbm"] + (["none"] if args.naive else []):
        t = time.perf_counter()
        fit = fit_preference(data, cfg.model_copy(update={"debias": mode}), clip_name)
        fit_s = time.perf_counter() - t
        rows[mode] = {"fit_seconds": fit_s, **evaluate_preference_run(args.world, fit, data)}
    result = {
        "impressions": len(data.log),
        "covers": len(data.cover_embeddings),
        "clip": clip_name,
        "threads": args.threads,
        "load_seconds_first": load_s,
        "load_seconds_cached": cached_s,
        "epochs": cfg.epochs,
        "cover_encoder": cfg.cover_encoder,
        "models": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    n = f"{len(data.log):,} impressions"
    out = [
        Row("preference", f"embed covers, first ({n})", load_s, "s"),
        Row(
            "preference",
            "embed covers, cached",
            cached_s,
            "s",
            "embed covers, first",
            cached_s / load_s,
        ),
    ]
    for mode, r in rows.items():
        name = "debiased (PBM)" if mode == "pbm" else "naive"
        out.append(Row("preference", f"{name} fit", r["fit_seconds"], "s"))
        out.append(
            Row(
                "preference",
                f"{name} val AUC",
                r["val_auc"],
                "AUC",
                "Bayes AUC",
                r["val_auc"] / r["bayes_auc"],
            )
        )
        out.append(Row("preference", f"{name} taste Spearman", r["taste_spearman"], "rho"))
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print_table(measure(parser().parse_args()), "bench_preference")
