"""Stage-B trainers compared on a CoverWorld with the hidden truth (single draws; not a test).

Trains one stage-B run from a stage-A adapter and scores a fixed probe set of (user, item) pairs
with the truth before and after: one draw per pair with the user, without the user, and with user
guidance 3 (same noise), beside the platform's reference covers. Used for the README's trainer
comparison:

    icg world generate --out W --items 300 --users 150 --impressions 300000 --seed 3
    icg train preference --data W --out RUN/preference
    icg train align --data W --out RUN/align --seed 3
    python benchmarks/probe_stage_b.py --world W --init RUN/align --preference RUN/preference \
        --out RUN/ranked --set trainer=ranked learning_rate=3e-4 max_steps=64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from icg.world.truth import Truth

METRICS = ("ctr", "taste_match", "relevance", "aesthetic")


class TruthProbe:
    """A stage-B callback: truth scores of single draws on a fixed set of pairs (monitoring)."""

    def __init__(self, world: Path, n_pairs: int = 64, seed: int = 0) -> None:
        self.truth, self.n, self.seed = Truth(world), n_pairs, seed
        self.pairs: list[tuple[str, str]] | None = None
        self.rows: list[dict] = []

    def _score(self, images: np.ndarray, users: list[str], items: list[str]) -> dict:
        s = self.truth.score(images, users, items)
        return {k: float(np.mean(s[k])) for k in METRICS}

    def __call__(self, recipe, step: int) -> dict:
        if self.pairs is None:
            rows = np.random.default_rng(self.seed).choice(
                len(recipe.pool.pairs), self.n, replace=False
            )
            self.pairs = [
                (recipe.pool.pairs.at[r, "user_id"], recipe.pool.pairs.at[r, "item_id"])
                for r in rows
            ]
        users, items = [u for u, _ in self.pairs], [i for _, i in self.pairs]
        row, guidance = {"step": step}, recipe.config.user_guidance
        for tag, drawn_for, w in (("user", users, guidance), ("nouser", [None] * len(users), 1.0),
                                  ("ug3", users, 3.0)):  # fmt: skip
            recipe.config.user_guidance = w
            images = recipe.generate(items, drawn_for, seed=self.seed)
            row |= {f"{tag}/{k}": v for k, v in self._score(images, users, items).items()}
        recipe.config.user_guidance = guidance
        if step == 0:
            ref = np.stack([np.asarray(recipe.pool.item_images[i].resize((64, 64))) for i in items])
            row |= {f"reference/{k}": v for k, v in self._score(ref, users, items).items()}
        self.rows.append(row)
        print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--init", type=Path, required=True)
    parser.add_argument("--preference", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--set", nargs="*", default=[], help="RewardConfig fields, NAME=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from icg.training.reward import RewardConfig, run_reward

    values = dict(
        data=args.world, init=args.init, out=args.out, preference=args.preference,
        rewards={"aesthetic": 1.0, "relevance": 2.0, "preference": 2.0},
        num_inference_steps=10, guidance_scale=3.0, checkpoint_every=10_000,
    )  # fmt: skip
    for item in args.set:
        name, value = item.split("=", 1)
        values[name] = yaml.safe_load(value)
    cfg = RewardConfig(**values)
    cfg.probe_every = cfg.max_steps
    probe = TruthProbe(args.world, args.pairs)
    start = time.perf_counter()
    run_reward(cfg, callbacks=[probe])
    print(f"wall {time.perf_counter() - start:.1f} s")
    (args.out / "probe.json").write_text(json.dumps(probe.rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
