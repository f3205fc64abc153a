"""Quality against cost of batch generation on CoverWorld: how many segments are worth paying for.

For every user of the world and a fixed subset of items, `icg batch` (local engine) draws covers
per (segment, item) at each segment count (k-means 1, 4, 16, 64, and one segment per user) and
candidate count, and the hidden truth scores the cover each user is assigned, two ways:
``segment`` (every user gets their segment's cover) and ``preference`` (the run's preference
model picks, per user, among the item's covers of every segment). The truth is read here, for
evaluation only; the batch code never reads it.

Columns: true CTR, taste match, relevance, lift fraction (0 = the platform's reference covers,
1 = the truth's oracle cover, per pair), images drawn for the subset, and images per 1,000
users per item (1000 · S · K / U: what the setting costs per item at this world's user count).
K = 1 rows reuse candidate 0 of the K > 1 draws (the same seed, so the same cover).

Rerun (about 10 CPU minutes on an idle 2-core machine at the defaults):
    python benchmarks/batch_quality.py --world demo-out/world --run demo-out/run \
        --items 8 --out /tmp/batch-quality --json docs/results/batch-quality.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from icg.batch import BatchConfig, run_batch
from icg.batch.assign import PreferencePicker, preference_picks, segment_covers
from icg.batch.plan import cover_path, load_plan, user_choices
from icg.batch.tables import read_catalog
from icg.evaluation.metrics import lift_fraction
from icg.io import atomic_write_json
from icg.world.truth import Truth

logger = logging.getLogger("batch_quality")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="Batch output folders go here.")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--items", type=int, default=8, help="Items in the fixed subset.")
    p.add_argument("--segments", default="1,4,16,64,user")
    p.add_argument("--candidates", type=int, default=4, help="K of the best-of-K rows.")
    p.add_argument("--candidates-up-to", type=int, default=16, help="Best-of-K for S <= this.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p


def load_images(paths: list[Path]) -> np.ndarray:
    """uint8 (N, H, W, 3) covers."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def truth_scores(truth: Truth, images: np.ndarray, pairs: pd.DataFrame) -> dict[str, np.ndarray]:
    return truth.score(images, pairs["user_id"].tolist(), pairs["item_id"].tolist())


def summarise(scores: dict, ref_ctr: float, oracle_ctr: float) -> dict[str, float]:
    ctr = float(np.mean(scores["ctr"]))
    return {
        "true_ctr": ctr,
        "taste_match": float(np.mean(scores["taste_match"])),
        "relevance": float(np.mean(scores["relevance"])),
        "lift_fraction": lift_fraction(ctr, ref_ctr, oracle_ctr),
    }


def k1_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest one draw per unit would have written: candidate 0 of every unit."""
    m = manifest.copy()
    m["candidate"] = 0
    m["path"] = [cover_path(s, i, 0) for s, i in zip(m["segment"], m["item_id"], strict=True)]
    return m


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args()
    truth = Truth(args.world)
    items, users = read_catalog(args.world, args.out / "rejects", check_images=False)
    subset = items.sort_values("item_id").sample(n=args.items, random_state=args.seed)
    subset = subset.sort_values("item_id")
    pairs = pd.DataFrame(
        [(u, i) for u in sorted(users["user_id"]) for i in subset["item_id"]],
        columns=["user_id", "item_id"],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    pairs.to_parquet(args.out / "pairs.parquet", index=False)
    n_users = users["user_id"].nunique()

    ref_images = load_images(
        [Path(p) for p in subset.set_index("item_id").loc[pairs.item_id, "image"]]
    )
    ref = truth_scores(truth, ref_images, pairs)
    oracle = truth_scores(truth, truth.oracle_covers(pairs.user_id, pairs.item_id), pairs)
    ref_ctr, oracle_ctr = float(np.mean(ref["ctr"])), float(np.mean(oracle["ctr"]))
    rows = [
        {"setting": "reference covers", **summarise(ref, ref_ctr, oracle_ctr)},
        {"setting": "oracle (truth)", **summarise(oracle, ref_ctr, oracle_ctr)},
    ]
    for spec in args.segments.split(","):
        per_user = spec == "user"
        s = n_users if per_user else int(spec)
        k = args.candidates if (not per_user and s <= args.candidates_up_to) else 1
        out = args.out / f"s{spec}-k{k}"
        start = time.perf_counter()
        result = run_batch(
            BatchConfig(
                run=args.run, data=args.world, out=out, segments=max(s, 1),
                segment_by="user" if per_user else "kmeans", candidates=k, engine="local",
                pairs=args.out / "pairs.parquet", pick="preference", threads=args.threads,
                seed=args.seed,
            )
        )  # fmt: skip
        seconds = time.perf_counter() - start
        segments, _ = load_plan(out)
        own = segments.users.set_index("user_id")["segment"]
        users_seg = users.set_index("user_id").loc[own.index].reset_index()
        users_seg["segment"] = own.to_numpy()
        choices = user_choices(segments, users_seg, None)
        picker = PreferencePicker(args.run / "preference", out)
        for kk in sorted({1, k}):
            manifest = result.manifest if kk == k else k1_manifest(result.manifest)
            picks = {
                "segment": segment_covers(pairs, own, manifest),
                "preference": preference_picks(pairs, users_seg, choices, manifest, kk, picker),
            }
            for pick, frame in picks.items():
                images = load_images([out / p for p in frame["path"]])
                scores = truth_scores(truth, images, frame)
                drawn = len(segments.table) * len(subset) * kk
                rows.append(
                    {
                        "setting": f"{'per user' if per_user else f'{s} segments'}, K={kk}, "
                        f"pick={pick}",
                        "segments": len(segments.table),
                        "candidates": kk,
                        "pick": pick,
                        **summarise(scores, ref_ctr, oracle_ctr),
                        "images_drawn": drawn,
                        "images_per_1000_users_per_item": 1000 * len(segments.table) * kk / n_users,
                        "batch_seconds": seconds if kk == k else None,
                    }
                )
                logger.info("%s", rows[-1])
    report = {
        "world": str(args.world),
        "run": str(args.run),
        "items": subset["item_id"].tolist(),
        "n_items": len(subset),
        "n_users": n_users,
        "pairs": len(pairs),
        "seed": args.seed,
        "note": "CPU; batch_seconds include model loading",
        "rows": rows,
    }
    print(json.dumps(rows, indent=1))
    if args.json is not None:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
