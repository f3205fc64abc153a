"""Does a loop round's retrained reward train a better stage B? Over training seeds, not one run.

`benchmarks/online_ab.py --loop-round` compares one draw of the run (its stage B, seed s) with
one draw of the round's stage B (the retrained reward, seed s): one pair of runs, while stage B's
training-seed spread (about 0.03 of one draw's true CTR) is as large as the effects looked for.
This script trains the round's stage B again with ``--seeds`` seeds, with the reward before the
round (RUN/preference) and after it (ROUND/preference), every other setting the round's own
(its recorded config), and draws each run's first draw on the round's measured pairs with the
same noise seeds as `online_ab.py`. Each seed gives one paired difference (after − before, the
mean over the pairs), and the 95% t-interval over seeds has runs as its unit. Before at the
round's seed retrains the run's own stage B: its one draw must equal the run's, a check that
only the reward differs.

    python benchmarks/loop_reward_seeds.py --world W --run RUN --round LOOP/round_1 \\
        --out OUT --seeds 0,1,2 --users 8 --items 32 --seed 3 [--json F]

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
import torch

from icg.config import read_yaml_mapping
from icg.data import load_dataset
from icg.loop import experiment_pairs
from icg.matrix.stats import t_interval
from icg.models.paths import resolve_adapter_dir
from icg.pipeline import ICGPipeline
from icg.training.reward import RewardConfig, run_reward
from icg.world.truth import Truth  # evaluation only

sys.path.insert(0, str(Path(__file__).resolve().parent))
from online_ab import draw_k  # noqa: E402  (a sibling script, not a package)


def train(round_dir: Path, run: Path, preference: Path, seed: int, out: Path) -> Path:
    """Stage B with the round's recorded settings, ``preference`` as the reward and ``seed``;
    skipped when ``out`` holds a finished adapter."""
    if (out / "adapter" / "icg_config.json").is_file():
        return out
    values = read_yaml_mapping(round_dir / "icg" / "config.yaml")
    values.update(init=run / "align", out=out, preference=preference, seed=seed)
    run_reward(RewardConfig(**values), overwrite=True)
    return out


def one_draw(adapter: Path, world: Path, users: int, items: int, seed: int) -> np.ndarray:
    """Per measured pair, the true CTR of ``adapter``'s first draw (`online_ab.py`'s noise)."""
    cfg = read_yaml_mapping(adapter / "config.yaml")
    data = load_dataset(world, check_images=False)
    pairs = experiment_pairs(world, users, items)
    pipe = ICGPipeline.from_pretrained(resolve_adapter_dir(adapter))
    images = draw_k(pipe, data, pairs, 1, seed + 1000, cfg["num_inference_steps"],
                    cfg["guidance_scale"])[:, 0]  # fmt: skip
    return np.asarray(Truth(world).score(images, pairs["user_id"], pairs["item_id"])["ctr"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--run", type=Path, required=True, help="The run the round started from.")
    p.add_argument("--round", type=Path, required=True, help="LOOP/round_<r> (finished).")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", default="0,1,2", help="Stage-B training seeds.")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--items", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="online_ab.py's --seed (noise seeds).")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    rewards = {"before": args.run / "preference", "after": args.round / "preference"}
    runs: dict[str, dict[int, float]] = {"before": {}, "after": {}}
    for seed in seeds:
        for name, preference in rewards.items():
            out = train(args.round, args.run, preference, seed, args.out / f"{name}-s{seed}")
            ctr = one_draw(out, args.world, args.users, args.items, args.seed)
            runs[name][seed] = float(ctr.mean())
            print(f"seed {seed} {name}: one draw {runs[name][seed]:.4f}", flush=True)
    diffs = [runs["after"][s] - runs["before"][s] for s in seeds]
    result = {
        "world": str(args.world), "round": str(args.round), "seeds": seeds,
        "pairs": args.users * args.items, "one_draw": runs,
        "after_minus_before": t_interval(diffs).as_dict(),
        "run_own_one_draw": float(one_draw(args.run / "icg", args.world, args.users, args.items,
                                           args.seed).mean()),
    }  # fmt: skip
    d = result["after_minus_before"]
    print(f"after - before over {len(seeds)} seeds: {d['mean']:+.4f} [{d['low']}, {d['high']}]")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main(sys.argv[1:])
