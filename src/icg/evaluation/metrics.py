"""Evaluation metrics: truth metrics on CoverWorld, lift, diversity."""

from __future__ import annotations

import numpy as np

from icg.evaluation.personal import mean_interval


def truth_metrics(scores: dict[str, np.ndarray], cold_start: np.ndarray) -> dict[str, float]:
    """Aggregate `Truth.score` outputs (arrays (N,)) into the report's truth columns."""
    cold = np.asarray(cold_start, dtype=bool)
    out = {
        "fidelity_motif": float(np.mean(scores["motif_ok"])),
        "fidelity_palette": float(np.mean(scores["palette_ok"])),
        "true_aesthetic": float(np.mean(scores["aesthetic"])),
        "true_relevance": float(np.mean(scores["relevance"])),
        "true_taste_match": float(np.mean(scores["taste_match"])),
        "true_ctr": float(np.mean(scores["ctr"])),
    }
    out["true_ctr_coldstart"] = float(np.mean(scores["ctr"][cold])) if cold.any() else float("nan")
    return out


def lift_fraction(ctr: float, ctr_reference: float, ctr_oracle: float) -> float:
    """(CTR_method - CTR_reference) / (CTR_oracle - CTR_reference): 0 = reference, 1 = oracle."""
    gap = ctr_oracle - ctr_reference
    return float((ctr - ctr_reference) / gap) if gap > 1e-12 else float("nan")


def diversity(embeddings: np.ndarray, groups: np.ndarray) -> float:
    """Mean pairwise cosine distance between covers of the same item (groups: item ids).

    0 when every user gets the same cover for an item; higher means more personalization.
    """
    e = embeddings / (np.linalg.norm(embeddings, axis=1, keepdims=True) + 1e-8)
    vals = []
    for g in np.unique(groups):
        x = e[groups == g]
        if len(x) < 2:
            continue
        sim = x @ x.T
        iu = np.triu_indices(len(x), 1)
        vals.append(float(np.mean(1.0 - sim[iu])))
    return float(np.mean(vals)) if vals else 0.0


def pair_intervals(samples: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, dict]]:
    """``{method: {metric: {"mean", "ci_low", "ci_high", "n"}}}`` from per-pair values
    ``{method: {metric: (N,)}}``: each mean with its normal 95% interval over the pairs
    (`mean_interval`); the report's headline chart draws them."""
    return {
        method: {metric: mean_interval(np.asarray(v, dtype=float)) for metric, v in per.items()}
        for method, per in samples.items()
    }
