"""Where the preference model's AUC gap to Bayes comes from: oracle features (evaluation only).

Fits the default preference model on a CoverWorld, optionally with the world's truth put into its
inputs, and prints Bayes AUC - validation AUC and the true-taste Spearman:

- ``--oracle user``: each user's true taste vector (weight x distance to each style level, the
  terms of the world's taste match) in place of the platform embedding;
- ``--oracle cover``: the covers' true style levels (one-hot), relevance and aesthetic beside the
  CLIP embedding;
- ``--freeze-user-table``: no per-user taste vectors (the per-user click bias stays).

If the gap closes with an oracle, the features are what limit it; if it stays, the estimator.

    python benchmarks/preference_oracle.py --world W --oracle user,cover [--set rank=16 ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

import icg.training.preference as preference
from icg.evaluation.preference_eval import evaluate_preference_run
from icg.rewards.clip import ClipTowers
from icg.training.click_log import PreferenceData, load_preference_data
from icg.world.attributes import STYLE_DIMS, STYLE_LEVELS

ORACLES = ("user", "cover")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a CoverWorld with truth/")
    parser.add_argument("--oracle", default="", help="comma-separated: user, cover")
    parser.add_argument("--freeze-user-table", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], help="PreferenceConfig key=value (YAML)")
    parser.add_argument("--clip", default="zoo:clip")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def _relative(world: Path, paths: list[str]) -> list[str]:
    root = world.resolve()
    return [str(Path(p).resolve().relative_to(root)) if Path(p).is_absolute() else p for p in paths]


def add_oracles(world: Path, data: PreferenceData, oracles: set[str]) -> None:
    """Put the truth into ``data``'s user embeddings and/or cover inputs, in place."""
    truth = world / "truth"
    if "user" in oracles:
        users = pd.read_parquet(truth / "users.parquet").set_index("user_id").loc[data.user_ids]
        taste, weights = np.stack(users["taste"]), np.stack(users["weights"])  # (U, S) each
        vec = [
            weights[:, s, None] * np.abs(np.linspace(0, 1, len(STYLE_LEVELS[d]))[None] - taste[:, s, None])
            for s, d in enumerate(STYLE_DIMS)
        ]  # fmt: skip
        data.user_embeddings = torch.tensor(np.concatenate(vec, 1), dtype=torch.float32)
    if "cover" in oracles:
        covers = pd.read_parquet(truth / "covers.parquet").set_index("cover")
        rows = covers.loc[_relative(world, data.cover_paths)]
        onehot = [np.eye(len(STYLE_LEVELS[d]))[rows[f"style_{d}"].to_numpy()] for d in STYLE_DIMS]
        extra = np.concatenate(onehot + [3 * rows[["relevance", "aesthetic"]].to_numpy()], 1)
        extra = torch.tensor(0.3 * extra, dtype=torch.float32)
        data.cover_embeddings = torch.cat([data.cover_embeddings, extra], 1)
        data.input_layout = None  # plain embeddings, now wider


def _freezing(build):
    def build_frozen(*args, **kwargs):
        model = build(*args, **kwargs)
        if model.user_table is not None:
            model.user_table.weight.requires_grad_(False)  # stays zero: no per-user tastes
        return model

    return build_frozen


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    oracles = {o for o in args.oracle.split(",") if o}
    if oracles - set(ORACLES):
        raise SystemExit(f"--oracle: expected some of {ORACLES}, got {sorted(oracles)}")
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = preference.PreferenceConfig(**overrides)
    towers = ClipTowers.from_pretrained(args.clip)
    cache = args.world.parent / f"{args.world.name}_{cfg.cover_encoder}_cache.safetensors"
    data = load_preference_data(args.world, cfg, towers=towers, cache_file=cache)
    add_oracles(args.world, data, oracles)
    if args.freeze_user_table:
        preference.build_model = _freezing(preference.build_model)
    fit = preference.fit_preference(data, cfg, args.clip)
    r = evaluate_preference_run(args.world, fit, data)
    return {
        "world": str(args.world),
        "oracle": sorted(oracles),
        "freeze_user_table": args.freeze_user_table,
        "config": overrides,
        "gap": r["bayes_auc"] - r["val_auc"],
        "val_auc": r["val_auc"],
        "bayes_auc": r["bayes_auc"],
        "taste_spearman": r["taste_spearman"],
        "fit_seconds": fit.metrics["train_seconds"],
    }


if __name__ == "__main__":
    print(json.dumps(main(parser().parse_args()), indent=2))
