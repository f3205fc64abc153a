"""Online A/B of a trained run's batch covers against the platform's, beside their offline lift.

Given a trained run (a demo's ``OUT/run`` or a recipe-matrix cell's ``M/cells/<hash>/run``: a
folder with ``icg/`` and ``preference/``) and the CoverWorld it was trained on:

(a) ``icg batch`` draws a cover for every item and every user segment (k-means, the batch's own
    segmentation; each user is shown their segment's cover);
(b) ``icg world ab`` runs control = the items' own covers against icg = that batch output, users
    randomised by a hash of their id, ``--impressions`` impressions;
(c) ``icg ab report`` gives the online CTR lift with its 95% interval (clustered by user);
(d) the world's truth scores both arms' covers on every (user, item) pair the A/B showed
    (evaluation side only: this script reads truth/, no training code does), weighted by the
    pair's impressions: the offline truth-CTR lift, and whether it lies inside the online interval;
(e) with ``--loop-round``: one round of ``icg loop`` (``icg.loop.run_loop``: covers → A/B →
    preference retrained on the logs → stage B, by default with ``--loop-covers batch``: one
    cover per (``--loop-segments`` segment, each of the first ``--loop-items`` items) shown to
    every icg-arm user; stage B with the run's own seed, on the world's folder, so only the
    reward changes), then, on the first ``--loop-users`` users x ``--loop-items`` items with
    ``--draws`` K draws each (the same noise seeds before and after), the reward–truth agreement
    on generated covers (per pair, Spearman of the preference score against the true CTR over
    its K draws; mean over pairs): first the retrained reward on the run's own draws against the
    run's reward on them (the reward alone, the loop's point), then the retrained reward on the
    new run's draws, and one draw's true CTR before and after (paired by pair).

Rerun (the demo's world and run; the batch draws segments x items covers, which dominates the
time: the quick demo's 4 x 100 took about 30 minutes on a 2-core machine shared at load 9-10;
the loop round adds covers, a preference fit and a stage-B run):
    python benchmarks/online_ab.py --world demo-out/world --run demo-out/run \
        --out online-ab --segments 4 --impressions 200000 --loop-round \
        --json docs/results/online-ab-seed3.json
Everything goes under ``--out`` (batch/, ab/, report/, loop/, draws/) and ``--out/online.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from icg.ab import ab_report, load_log, write_report
from icg.batch import BatchConfig, run_batch
from icg.config import load_config
from icg.data import load_dataset
from icg.generation import draw_covers, pair_seed, reward_scorer
from icg.io import atomic_write_json
from icg.loop import LoopConfig, experiment_pairs, run_loop
from icg.models.paths import resolve_adapter_dir
from icg.pipeline import ICGPipeline
from icg.rewards import PreferenceReward
from icg.world.ab import arm_covers, score_covers, simulate_ab
from icg.world.truth import Truth

logger = logging.getLogger("online_ab")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True, help="The CoverWorld (with truth/).")
    p.add_argument("--run", type=Path, required=True, help="A run folder with icg/, preference/.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, default=None, help="Also write the result here.")
    p.add_argument("--segments", type=int, default=4, help="k-means user segments of the batch.")
    p.add_argument("--candidates", type=int, default=1, help="Best-of-K per (segment, item).")
    p.add_argument("--items", type=int, default=None, help="The first N items (default: all).")
    p.add_argument("--impressions", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=0, help="Poisson-bootstrap replicates.")
    p.add_argument("--num-inference-steps", type=int, default=None)
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--loop-round", action="store_true", help="(e): one icg loop round.")
    p.add_argument("--loop-covers", choices=["batch", "pairs"], default=None,
                   help="The round's covers: per (segment, item) for every user (batch, default) "
                   "or per (user, item) of the measured pairs (pairs).")  # fmt: skip
    p.add_argument("--loop-segments", type=int, default=None, help="Batch segments (4).")
    p.add_argument("--loop-users", type=int, default=None,
                   help="Users of the measured pairs (and of pairs covers); LoopConfig's (8).")  # fmt: skip
    p.add_argument("--loop-items", type=int, default=None,
                   help="The first N items: the round's batch and the measured pairs (12).")  # fmt: skip
    p.add_argument("--loop-reward-seed", type=int, default=None,
                   help="Stage B's seed (default: the one recorded in RUN/icg).")  # fmt: skip
    p.add_argument("--loop-preference-seed", type=int, default=None,
                   help="The retrain's seed (default: the one recorded in RUN/preference).")  # fmt: skip
    p.add_argument("--loop-reward-steps", type=int, default=None, help="LoopConfig's (60).")
    p.add_argument("--draws", type=int, default=8, help="K draws per pair for the agreement.")
    p.add_argument("--loop-config", type=Path, default=None,
                   help="A YAML LoopConfig for the round (as icg loop --config; options win).")  # fmt: skip
    return p


def draw_batch(args: argparse.Namespace, pipe=None) -> Path:
    """(a) Covers per (segment, item) for every user x every (or the first N) item."""
    out = args.out / "batch"
    pairs = None
    if args.items is not None:
        users = pd.read_parquet(args.world / "users.parquet")["user_id"].astype(str)
        items = sorted(pd.read_parquet(args.world / "items.parquet")["item_id"].astype(str))
        pairs = args.out / "batch-pairs.parquet"
        pairs.parent.mkdir(parents=True, exist_ok=True)
        chosen = items[: args.items]
        pd.DataFrame({"user_id": np.repeat(users.to_numpy(), len(chosen)),
                      "item_id": np.tile(chosen, len(users))}).to_parquet(pairs)  # fmt: skip
    config = BatchConfig(
        run=args.run, data=args.world, out=out, segments=args.segments, segment_by="kmeans",
        candidates=args.candidates, pick="segment", engine="local", seed=args.seed,
        num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
        threads=args.threads, pairs=pairs,
    )  # fmt: skip
    result = run_batch(config, pipe=pipe)
    logger.info("batch: %d segments x %d units, %d images drawn", result.segments,
                result.units, result.images)  # fmt: skip
    return out


def offline_lift(world: Path, ab: Path, batch: Path) -> dict[str, Any]:
    """(d) Both arms' covers scored by the truth on every (user, item) pair the A/B showed."""
    log = pd.read_parquet(ab / "impressions.parquet", columns=["user_id", "item_id", "arm"])
    shown = log.groupby(["user_id", "item_id"]).size().rename("impressions").reset_index()
    truth, size = Truth(world), Truth(world).config.image_size
    ctr = {}
    for arm, spec in (("control", "reference"), ("icg", str(batch))):
        covers = arm_covers(world, arm, spec)
        key = ["item_id"] if covers["user_id"].isna().all() else ["user_id", "item_id"]
        rows = shown.merge(covers.drop(columns=[] if len(key) == 2 else ["user_id"]), on=key)
        if len(rows) != len(shown):
            raise RuntimeError(f"{arm}: {len(shown) - len(rows)} shown pairs have no cover")
        ctr[arm] = score_covers(truth, rows, size)[0]  # (P,) in `shown` order
    w = shown["impressions"].to_numpy(dtype=np.float64)
    weighted = {a: float((w * c).sum() / w.sum()) for a, c in ctr.items()}
    plain = {a: float(c.mean()) for a, c in ctr.items()}
    return {
        "pairs": len(shown), "impressions": int(w.sum()),
        "true_ctr": weighted, "true_ctr_unweighted": plain,
        "lift": weighted["icg"] / weighted["control"] - 1,
        "lift_unweighted": plain["icg"] / plain["control"] - 1,
        "pairs_icg_better": float((ctr["icg"] > ctr["control"]).mean()),
    }  # fmt: skip


def online_vs_offline(args: argparse.Namespace, batch: Path) -> dict[str, Any]:
    """(b)-(d): the simulated A/B, its report, and the offline lift on the pairs it showed."""
    ab, report_dir = args.out / "ab", args.out / "report"
    experiment = simulate_ab(args.world, {"control": "reference", "icg": str(batch)},
                             args.impressions, args.seed, ab, overwrite=True)  # fmt: skip
    report = ab_report(load_log(ab, "arm"), "arm", "control", bootstrap=args.bootstrap)
    write_report(report, report_dir)
    offline = offline_lift(args.world, ab, batch)
    online = {}
    for metric in ("ctr", "adjusted_ctr"):
        lift = report["lift"]["icg"][metric]
        online[metric] = {k: lift[k] for k in ("lift", "low", "high", "p_value")}
        online[metric]["offline_inside"] = bool(lift["low"] <= offline["lift"] <= lift["high"])
    return {
        "users": experiment["users"], "impressions": experiment["impressions"],
        "arms": {a: {k: s[k] for k in ("users", "impressions", "clicks", "ctr", "adjusted_ctr")}
                 for a, s in report["arms"].items()},
        "online": online, "offline": offline, "srm": report["srm"],
        "agree": online["ctr"]["offline_inside"],
        "excludes_zero": bool(online["ctr"]["low"] > 0 or online["ctr"]["high"] < 0),
        "report": str(report_dir / "ab.html"), "warnings": report["warnings"],
    }  # fmt: skip


def draw_k(pipe, data, pairs: pd.DataFrame, k: int, seed: int, steps: int, guidance: float,
           batch_size: int = 16) -> np.ndarray:  # fmt: skip
    """K draws per pair, draw j from noise seed ``pair_seed(seed, user, item, j)``:
    uint8 (P, K, H, W, 3)."""
    items, users = data.items.set_index("item_id"), data.users.set_index("user_id")
    jobs = [(u, i, j) for u, i in zip(pairs["user_id"], pairs["item_id"], strict=True)
            for j in range(k)]  # fmt: skip
    images = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        emb = np.stack([np.asarray(users.at[u, "embedding"]) for u, _, _ in chunk])  # (B, E)
        images += draw_covers(pipe, [items.at[i, "title"] for _, i, _ in chunk],
                              [items.at[i, "image"] for _, i, _ in chunk], [i for _, i, _ in chunk],
                              torch.as_tensor(emb, dtype=torch.float32),
                              [pair_seed(seed, u, i, j) for u, i, j in chunk], steps, guidance)  # fmt: skip
    arr = np.stack([np.asarray(im.convert("RGB")) for im in images])  # (P*K, H, W, 3)
    return arr.reshape(len(pairs), k, *arr.shape[1:])


def spearman_per_pair(score: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Spearman correlation over each pair's K draws: (P, K), (P, K) -> (P,) (NaN if constant)."""
    out = np.full(len(score), np.nan)
    for p, (s, t) in enumerate(zip(score, truth, strict=True)):
        if np.ptp(s) > 0 and np.ptp(t) > 0:
            out[p] = stats.spearmanr(s, t).statistic
    return out


def paired(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """Mean of ``after - before`` with its 95% Student-t interval over the pairs where both are
    defined (a Spearman over constant scores is NaN)."""
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    keep = ~(np.isnan(before) | np.isnan(after))
    before, after = before[keep], after[keep]
    d = after - before
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0
    return {"before": float(np.mean(before)), "after": float(np.mean(after)),
            "diff": float(d.mean()), "low": float(d.mean() - half),
            "high": float(d.mean() + half), "pairs": len(d)}  # fmt: skip


def loop_round(
    args: argparse.Namespace,
    pipeline: Callable[[Path], Any] | None = None,
    towers=None,
    reward_parts: Callable[[], dict] | None = None,
) -> dict[str, Any]:
    """(e) One `icg loop` round, then reward–truth agreement and one draw's true CTR before/after.

    ``pipeline`` (adapter folder -> `ICGPipeline`), ``towers`` and ``reward_parts`` are passed
    to `run_loop` (default: loaded from the runs' records); ``towers`` also scores with the
    preference models."""
    load = pipeline or (lambda a: ICGPipeline.from_pretrained(resolve_adapter_dir(a)))
    cfg = load_config(LoopConfig, args.loop_config, world=args.world, run=args.run,
                      out=args.out / "loop", rounds=1, covers=args.loop_covers,
                      segments=args.loop_segments, users=args.loop_users,
                      items=args.loop_items, impressions=args.impressions,
                      reward_steps=args.loop_reward_steps, seed=args.seed,
                      reward_seed=args.loop_reward_seed, threads=args.threads,
                      preference_seed=args.loop_preference_seed,
                      num_inference_steps=args.num_inference_steps,
                      guidance_scale=args.guidance_scale)  # fmt: skip
    steps, guidance = cfg.num_inference_steps, cfg.guidance_scale
    loop = run_loop(cfg, pipeline=load, towers=towers, reward_parts=reward_parts)
    round_1 = cfg.out / "round_1"
    data = load_dataset(args.world, check_images=False)
    pairs = experiment_pairs(args.world, cfg.users, cfg.items)
    truth = Truth(args.world)
    u = np.repeat(pairs["user_id"].to_numpy(), args.draws)
    i = np.repeat(pairs["item_id"].to_numpy(), args.draws)

    def reward(folder: Path):
        return reward_scorer(PreferenceReward(folder, towers).eval(), data)

    results = {}
    for name, run in (("before", args.run / "icg"), ("after", round_1 / "icg")):
        images = draw_k(load(run), data, pairs, args.draws, args.seed + 1000, steps, guidance)
        flat = images.reshape(-1, *images.shape[2:])  # (P*K, H, W, 3)
        results[name] = {"images": flat, "true_ctr": truth.score(flat, u, i)["ctr"]}
    shape = (len(pairs), args.draws)
    old_reward, new_reward = reward(args.run / "preference"), reward(round_1 / "preference")
    rho = {
        "before": spearman_per_pair(old_reward(u, i, results["before"]["images"]).reshape(shape),
                                    results["before"]["true_ctr"].reshape(shape)),
        "after": spearman_per_pair(new_reward(u, i, results["after"]["images"]).reshape(shape),
                                   results["after"]["true_ctr"].reshape(shape)),
        "after_same_covers": spearman_per_pair(
            new_reward(u, i, results["before"]["images"]).reshape(shape),
            results["before"]["true_ctr"].reshape(shape)),
    }  # fmt: skip
    one_before = results["before"]["true_ctr"].reshape(shape)[:, 0]
    one_after = results["after"]["true_ctr"].reshape(shape)[:, 0]
    return {
        "pairs": len(pairs), "draws": args.draws,
        # the reward alone (the loop's point): the retrained reward against the run's, on the
        # run's own draws
        "agreement_same_covers_paired": paired(rho["before"], rho["after_same_covers"]),
        "agreement": {k: float(np.nanmean(v)) for k, v in rho.items()},
        "agreement_paired": paired(rho["before"], rho["after"]),
        "one_draw_true_ctr": paired(one_before, one_after),
        "loop": loop["rounds"][0], "covers": cfg.covers, "seeds": loop["seeds"],
        "impressions_spent": loop["rounds"][0]["impressions_total"],
    }  # fmt: skip


def main(argv: list[str] | None = None, **parts: Any) -> dict[str, Any]:
    """Run (a)-(d), and (e) with ``--loop-round``; write ``OUT/online.json`` (and ``--json``).

    ``parts`` (tests): ``pipe`` for the batch, and ``pipeline``, ``towers``, ``reward_parts``
    for the loop round."""
    args = parser().parse_args(argv)
    batch = draw_batch(args, pipe=parts.get("pipe"))
    result = {"world": str(args.world), "run": str(args.run), "segments": args.segments,
              "candidates": args.candidates, "seed": args.seed,
              **online_vs_offline(args, batch)}  # fmt: skip
    if args.loop_round:
        keep = {k: parts[k] for k in ("pipeline", "towers", "reward_parts") if k in parts}
        result["loop_round"] = loop_round(args, **keep)
    for path in (args.out / "online.json", args.json):
        if path is not None:
            atomic_write_json(path, result)
    on, off = result["online"]["ctr"], result["offline"]
    print(f"online lift {on['lift']:+.1%} [{on['low']:+.1%}, {on['high']:+.1%}] "
          f"p={on['p_value']:.3g}; offline truth-CTR lift {off['lift']:+.1%} on "
          f"{off['pairs']} shown pairs: {'agree' if result['agree'] else 'DISAGREE'}")  # fmt: skip
    if "loop_round" in result:
        lr = result["loop_round"]
        same, new, one = (
            lr["agreement_same_covers_paired"],
            lr["agreement_paired"],
            lr["one_draw_true_ctr"],
        )
        print(f"retrained reward on the run's own covers: reward-truth agreement "
              f"{same['before']:.3f} -> {same['after']:.3f} ({same['diff']:+.3f} "
              f"[{same['low']:+.3f}, {same['high']:+.3f}], {same['pairs']} pairs)")  # fmt: skip
        print(f"new run's covers: agreement {new['before']:.3f} -> {new['after']:.3f} "
              f"({new['diff']:+.3f} [{new['low']:+.3f}, {new['high']:+.3f}]); one draw's true "
              f"CTR {one['before']:.4f} -> {one['after']:.4f} ({one['diff']:+.4f} "
              f"[{one['low']:+.4f}, {one['high']:+.4f}]); {lr['loop']['icg_impressions']} of "
              f"{lr['loop']['impressions']} impressions showed generated covers")  # fmt: skip
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main(sys.argv[1:])
