"""Does a loop round make the reward rank generated covers better? Over runs, not one.

`benchmarks/online_ab.py --loop-round` measures the reward–truth agreement on generated covers
(per pair, Spearman of the preference score against the true CTR over the pair's K draws)
before and after one round for one A/B and one preference fit. Its change (+0.016 in the mean
over worlds 3, 11, 5) is about as large as what a second preference seed or a second A/B moves.
This script repeats the round's reward half with ``--seeds`` seeds: for seed s,

- the round's covers (ROUND/covers, the run's batch output) against the platform's in a fresh
  simulated A/B (seed ``--seed + 1 + s``; s = 0 is the round's own A/B seed), the round's
  impressions;
- the preference model, with RUN/preference's recorded config and seed s, fitted twice: on the
  world's own logs ("before") and on those plus the A/B's ("after"), so only the round's data
  differs; with ``--control`` also a third time, on the world's logs plus the same A/B (seed,
  users and their arms, items, impressions) with each item's own cover in place of the
  generated ones, which separates what the generated covers' clicks teach from more logs;
- all score the same K draws of the run on the first ``--users`` x ``--items`` pairs (drawn
  once, with `online_ab.py`'s noise seeds and the round's sampler settings), and the seed's
  result is the mean over pairs of after − before.

Runs (seeds, and worlds when several results are pooled with ``--pool``) are the unit of the
95% t-interval.

    python benchmarks/loop_agreement_seeds.py --world W --run RUN --round LOOP/round_1 \\
        --out OUT --seeds 0,1,2,3,4 --users 16 --items 32 --seed 3 --json F
    python benchmarks/loop_agreement_seeds.py --pool F3 F11 F5 --json POOLED

Reads the world's truth to score the draws (evaluation side only).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from icg.config import read_yaml_mapping
from icg.data import load_dataset
from icg.generation import reward_scorer
from icg.io import atomic_path, atomic_write_json
from icg.layout import PREFERENCE_RUN, TRAIN_CONFIG_FILE
from icg.loop import experiment_items, experiment_pairs, merge_logs
from icg.matrix.stats import t_interval
from icg.models.paths import resolve_adapter_dir
from icg.pipeline import ICGPipeline
from icg.rewards import PreferenceReward
from icg.training.preference import PreferenceConfig, train_preference
from icg.world.ab import simulate_ab
from icg.world.truth import Truth  # evaluation only

sys.path.insert(0, str(Path(__file__).resolve().parent))
from online_ab import draw_k, paired, spearman_per_pair  # noqa: E402  (a sibling script)


def run_draws(args: argparse.Namespace, data, pairs, steps: int, guidance: float
              ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The run's K draws per pair (uint8 (P*K, H, W, 3)) and their true CTR, cached in OUT."""
    cache = args.out / "draws.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return f["images"], f["true_ctr"]
    pipe = ICGPipeline.from_pretrained(resolve_adapter_dir(args.run / "icg"))
    images = draw_k(pipe, data, pairs, args.draws, args.seed + 1000, steps, guidance)
    images = images.reshape(-1, *images.shape[2:])
    u, i = (np.repeat(pairs[c].to_numpy(), args.draws) for c in ("user_id", "item_id"))
    true_ctr = np.asarray(Truth(args.world).score(images, u, i)["ctr"])
    with atomic_path(cache) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, true_ctr=true_ctr)
    return images, true_ctr


def fit(data_dir: Path, out: Path, cfg: PreferenceConfig) -> Path:
    """`train_preference`, skipped when ``out`` holds a finished model."""
    if not (out / "config.json").is_file():
        train_preference(data_dir, out, cfg, overwrite=True)
    return out


def platform_arm(args: argparse.Namespace, loop_cfg: dict) -> Path:
    """A manifest arm that shows every user each item's own cover on the round's items: the
    round's A/B with the platform's pixels in place of the generated ones (same items, users,
    randomisation and impressions; the covers are logged as new variants, as generated ones are)."""
    manifest = args.out / "platform-arm" / "manifest.parquet"
    if not manifest.is_file():
        users = pd.read_parquet(args.world / "users.parquet", columns=["user_id"])["user_id"]
        items = pd.read_parquet(args.world / "items.parquet", columns=["item_id", "image"])
        items = items[items["item_id"].isin(experiment_items(args.world, loop_cfg["items"]))]
        rows = [
            (str(u), i, "icg", str((args.world / p).resolve()))
            for u in users
            for i, p in zip(items["item_id"], items["image"], strict=True)
        ]
        with atomic_path(manifest) as tmp:
            pd.DataFrame(rows, columns=["user_id", "item_id", "method", "path"]).to_parquet(
                tmp, index=False
            )
    return manifest


def measure(args: argparse.Namespace) -> dict[str, Any]:
    data = load_dataset(args.world, check_images=False)
    pairs = experiment_pairs(args.world, args.users, args.items)
    loop_cfg = read_yaml_mapping(args.round.parent / "loop.json")["config"]
    images, true_ctr = run_draws(args, data, pairs, loop_cfg["num_inference_steps"],
                                 loop_cfg["guidance_scale"])  # fmt: skip
    u, i = (np.repeat(pairs[c].to_numpy(), args.draws) for c in ("user_id", "item_id"))
    shape = (len(pairs), args.draws)
    truth = true_ctr.reshape(shape)
    recorded = read_yaml_mapping(args.run / PREFERENCE_RUN / TRAIN_CONFIG_FILE)

    def agreement(preference: Path) -> np.ndarray:
        score = reward_scorer(PreferenceReward(preference).eval(), data)(u, i, images)
        return spearman_per_pair(np.asarray(score).reshape(shape), truth)

    def logs(s: int, arm: str, name: str) -> Path:
        """The world's logs plus a fresh A/B (seed s) whose icg arm shows ``arm``."""
        ab, merged = args.out / f"{name}-s{s}", args.out / f"data-{name}-s{s}"
        if not (ab / "experiment.json").is_file():
            simulate_ab(args.world, {"control": "reference", "icg": arm},
                        loop_cfg["impressions"], args.seed + 1 + s, ab, overwrite=True)  # fmt: skip
        if not (merged / "impressions.parquet").is_file():
            merge_logs(args.world, [ab], merged)
        return merged

    runs, controls = {}, {}
    for s in args.seeds:
        cfg = PreferenceConfig(**{**recorded, "seed": s})
        before = agreement(fit(args.world, args.out / f"before-s{s}", cfg))
        covers = logs(s, str(args.round / "covers"), "ab")
        after = agreement(fit(covers, args.out / f"after-s{s}", cfg))
        runs[s] = r = paired(before, after)
        print(f"seed {s}: agreement {r['before']:.3f} -> {r['after']:.3f} ({r['diff']:+.3f} "
              f"[{r['low']:+.3f}, {r['high']:+.3f}], {r['pairs']} pairs)", flush=True)  # fmt: skip
        if args.control:  # the same experiment, the platform's pixels
            platform = logs(s, str(platform_arm(args, loop_cfg)), "platform")
            control = agreement(fit(platform, args.out / f"control-s{s}", cfg))
            controls[s] = c = paired(control, after)
            print(f"seed {s}: control (the platform's covers) {c['before']:.3f}; "
                  f"generated covers' clicks add {c['diff']:+.3f}", flush=True)  # fmt: skip
    diffs = [r["diff"] for r in runs.values()]
    return {
        "world": str(args.world), "run": str(args.run), "round": str(args.round),
        "seeds": args.seeds, "pairs": len(pairs), "draws": args.draws,
        "impressions": loop_cfg["impressions"], "preference_config": recorded,
        "runs": {str(s): r for s, r in runs.items()},
        "after_minus_before": t_interval(diffs).as_dict(),
        **({"control_runs": {str(s): c for s, c in controls.items()},
            "after_minus_control": t_interval([c["diff"] for c in controls.values()]).as_dict()}
           if controls else {}),
    }  # fmt: skip


def pool(files: list[Path]) -> dict[str, Any]:
    """Every run of several worlds' results: one t-interval with runs as the unit."""
    results = [json.loads(f.read_text()) for f in files]
    pooled = {"files": [str(f) for f in files]}
    for key, runs in (("after_minus_before", "runs"), ("after_minus_control", "control_runs")):
        if all(runs in res for res in results):
            diffs = [r["diff"] for res in results for r in res[runs].values()]
            pooled[key] = t_interval(diffs).as_dict()
            pooled[f"{key}_per_world"] = {res["world"]: res[key] for res in results}
    return pooled


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path)
    p.add_argument("--run", type=Path, help="The run the round started from.")
    p.add_argument("--round", type=Path, help="LOOP/round_1 of `icg loop` (finished covers).")
    p.add_argument("--out", type=Path)
    p.add_argument("--seeds", default="0,1,2,3,4", help="Preference and A/B seeds.")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--items", type=int, default=32)
    p.add_argument("--draws", type=int, default=8, help="K draws per pair.")
    p.add_argument("--seed", type=int, default=0, help="online_ab.py's --seed (noise, A/B).")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--control",
        action="store_true",
        help="Also fit on the world's logs plus an A/A of the platform's covers.",
    )
    p.add_argument("--pool", type=Path, nargs="+", default=None, help="Pool these results.")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pool:
        result = pool(args.pool)
    else:
        if None in (args.world, args.run, args.round, args.out):
            p.error("--world, --run, --round and --out are required (or --pool)")
        args.seeds = [int(s) for s in args.seeds.split(",")]
        result = measure(args)
    d = result["after_minus_before"]
    low, high = (f"{v:+.4f}" if v is not None else "n/a" for v in (d["low"], d["high"]))
    print(f"after - before over {d['n']} runs: {d['mean']:+.4f} [{low}, {high}]")
    if args.json is not None:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main(sys.argv[1:])
