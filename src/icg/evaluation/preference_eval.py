"""Evaluation of the preference model against CoverWorld's hidden truth (evaluation only).

This is the one place where preference-model code meets ``<world>/truth/``: the Bayes-optimal
AUC of the logged clicks and how well the model's attractiveness ranks covers by each user's true
taste match, also for a naive fit beside the debiased one. Training code never imports this
module; `preference_truth_report` runs after training (what ``icg train preference`` prints) and
`truth_callbacks` gives stage B its monitoring probe, both only when ``<world>/truth/`` exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icg.layout import TRUTH_DIR
from icg.training.preference import auc, fit_preference
from icg.world.attributes import STYLE_DIMS, style_vector
from icg.world.truth import Truth
from icg.world.users import taste_match


def has_truth(world_dir: str | Path) -> bool:
    """Whether ``world_dir`` is a CoverWorld with its hidden truth."""
    return (Path(world_dir) / TRUTH_DIR / "impressions.parquet").is_file()


def bayes_auc(world_dir: str | Path, event_ids, clicked) -> float:
    """AUC of the true click probability on the given events: the best any model can reach.

    Args:
        world_dir: the CoverWorld folder.
        event_ids: ``N`` event ids (e.g. the validation events).
        clicked: ``N`` observed clicks.
    """

    truth = pd.read_parquet(
        Path(world_dir) / TRUTH_DIR / "impressions.parquet", columns=["event_id", "p_click"]
    )
    p = truth.set_index("event_id")["p_click"].reindex(pd.Index(np.asarray(event_ids).astype(str)))
    if p.isna().any():
        raise KeyError(
            f"{int(p.isna().sum())} event ids not in {world_dir}/truth (first: {p.index[p.isna()][0]})"
        )
    return auc(p.to_numpy(), np.asarray(clicked))


def true_taste_matrix(world_dir: str | Path, user_ids, covers) -> np.ndarray:
    """True taste match ``(U, C)`` of users for platform covers, from the covers' style levels.

    Args:
        world_dir: the CoverWorld folder.
        user_ids: ``U`` user ids.
        covers: ``C`` cover paths (absolute or relative to ``world_dir``).
    """

    root = Path(world_dir).resolve()
    users = pd.read_parquet(root / TRUTH_DIR / "users.parquet").set_index("user_id")
    table = pd.read_parquet(root / TRUTH_DIR / "covers.parquet").set_index("cover")
    rel = [
        str(Path(c).resolve().relative_to(root)) if Path(c).is_absolute() else str(c)
        for c in covers
    ]
    levels = table.loc[rel, [f"style_{d}" for d in STYLE_DIMS]].to_numpy()  # (C, S)
    style = np.stack([style_vector(lv) for lv in levels])  # (C, S)
    u = users.loc[list(user_ids)]
    taste = np.stack(u["taste"].to_numpy())  # (U, S)
    weights = np.stack(u["weights"].to_numpy())  # (U, S)
    return taste_match(style[None], taste[:, None], weights[:, None])  # (U, C)


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b``: ``(U,)``."""
    ra = a.argsort(1).argsort(1).astype(np.float64)
    rb = b.argsort(1).argsort(1).astype(np.float64)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    return (ra * rb).sum(1) / np.where(den > 0, den, np.nan)


@torch.no_grad()
def taste_ranking(
    model,
    world_dir: str | Path,
    cover_paths,
    cover_embeddings: torch.Tensor,
    user_ids,
    user_embeddings: torch.Tensor | None,
) -> dict[str, float]:
    """How well the model's attractiveness ranks covers by each user's true taste match.

    For every user, all covers are scored by ``attractiveness_logit`` (no item bias, so only the
    cover and the user count) and compared with the true taste match: mean Spearman correlation
    over users, and the pairwise accuracy within each item's cover variants (mean over users).
    """
    user_ids = list(user_ids)
    truth = true_taste_matrix(world_dir, user_ids, cover_paths)  # (U, C)
    feats = model.image_features(cover_embeddings)  # (C, rank), (C,)
    index = model.user_index(user_ids)  # (U,)
    z_u, _ = model.user_vector(len(user_ids), user_embeddings, index)  # (U, rank)
    scores = (z_u @ feats[0].T + feats[1][None]).numpy()  # (U, C)
    rho = _spearman_rows(scores, truth)
    # pairwise accuracy within items: covers of the same item share the file-name stem prefix
    owner = np.array([Path(c).stem.split("_v")[0] for c in cover_paths])
    correct = total = 0.0
    for item in np.unique(owner):
        cols = np.flatnonzero(owner == item)
        if len(cols) < 2:
            continue
        i, j = np.triu_indices(len(cols), 1)
        dt = truth[:, cols[i]] - truth[:, cols[j]]
        ds = scores[:, cols[i]] - scores[:, cols[j]]
        mask = np.abs(dt) > 1e-9
        correct += float(((dt * ds > 0) & mask).sum())
        total += float(mask.sum())
    return {
        "taste_spearman": float(np.nanmean(rho)),
        "taste_pairwise_acc": correct / total if total else float("nan"),
        "users": len(user_ids),
        "covers": len(cover_paths),
    }


def evaluate_preference_run(
    world_dir: str | Path,
    result,
    data,
) -> dict[str, float]:
    """The truth-side report of one fit: validation AUC beside the Bayes AUC, and taste ranking
    over the users with history (an empty dict when the folder has no truth)."""
    if not has_truth(world_dir):
        return {}
    out: dict[str, float] = {"val_auc": float(result.metrics["val_auc"])}
    if result.val is not None and result.val.event_id is not None:
        out["bayes_auc"] = bayes_auc(world_dir, result.val.event_id, result.val.clicked.numpy())
    users = list(result.model.config.user_ids or [])
    if users and data.cover_paths:
        rows = {u: k for k, u in enumerate(data.user_ids)}
        emb = (
            None if data.user_embeddings is None else data.user_embeddings[[rows[u] for u in users]]
        )
        out.update(
            taste_ranking(
                result.model, world_dir, data.cover_paths, data.cover_embeddings, users, emb
            )
        )
    return out


def compare_with_naive(world_dir: str | Path, result, cfg) -> dict[str, float]:
    """The truth-side report of a naive fit (no position debiasing) on the same data and
    hyper-parameters as ``result``: how much the debiasing buys. ``{}`` when ``result`` was
    already naive or the folder has no truth.

    Args:
        world_dir: the CoverWorld folder.
        result: a `FitResult` of `icg.training.preference.train_preference` (``result.data`` set).
        cfg: the `PreferenceConfig` of that fit.
    """

    if cfg.debias == "none" or not has_truth(world_dir):
        return {}
    naive = fit_preference(result.data, cfg.model_copy(update={"debias": "none"}), cfg.clip)
    return evaluate_preference_run(world_dir, naive, result.data)


def preference_truth_report(
    world_dir: str | Path, result, cfg, compare_naive: bool = False
) -> dict[str, dict[str, float]]:
    """What a preference fit is worth against the truth, after training: ``{"fit": ...}`` the
    `evaluate_preference_run` report of ``result`` and, with ``compare_naive``, ``{"naive": ...}``
    the same for a naive fit (`compare_with_naive`). ``{}`` when ``world_dir`` has no truth.

    Args:
        world_dir: the data folder the model was trained on (a CoverWorld, or not).
        result: the `FitResult` of `icg.training.preference.train_preference`.
        cfg: its `PreferenceConfig`.
        compare_naive: also fit without position debiasing and report it.
    """
    if not has_truth(world_dir):
        return {}
    report = {"fit": evaluate_preference_run(world_dir, result, result.data)}
    naive = compare_with_naive(world_dir, result, cfg) if compare_naive else {}
    if naive:
        report["naive"] = naive
    return report


def truth_callbacks(world_dir: str | Path) -> list:
    """Stage B's monitoring callbacks for ``world_dir``: a `TruthProbe` on a CoverWorld with its
    truth, none elsewhere (they are logged beside the curves, never seen by the loss)."""
    return [TruthProbe(world_dir)] if has_truth(world_dir) else []


class TruthProbe:
    """Stage-B monitoring callback: score a small fixed probe set of covers with the truth API.

    Injected by the CLI only when ``<world>/truth/`` exists; its numbers go to ``curves.jsonl``
    and are never seen by the loss. The probe pairs are drawn once (seeded) from the recipe's
    (user, item) pool; every call generates their covers from the same noise.

    Args:
        world_dir: the CoverWorld folder.
        num_pairs: probe size.
        seed: pair and noise seed.
    """

    def __init__(self, world_dir: str | Path, num_pairs: int = 8, seed: int = 0) -> None:

        self.truth = Truth(world_dir)
        self.num_pairs = num_pairs
        self.seed = seed
        self.pairs: list[tuple[str, str]] | None = None

    def __call__(self, recipe, step: int) -> dict[str, float]:
        if self.pairs is None:
            rng = np.random.default_rng(self.seed)
            rows = rng.choice(
                len(recipe.pool.pairs),
                size=min(self.num_pairs, len(recipe.pool.pairs)),
                replace=False,
            )
            self.pairs = [
                (recipe.pool.pairs.at[r, "user_id"], recipe.pool.pairs.at[r, "item_id"])
                for r in rows
            ]
        users = [u for u, _ in self.pairs]
        items = [i for _, i in self.pairs]
        images = recipe.generate(items, users, seed=self.seed)  # (N, H, W, 3) uint8
        scores = self.truth.score(images, users, items)
        return {f"truth/{k}": float(np.mean(v)) for k, v in scores.items()}
