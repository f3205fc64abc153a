"""Evaluation metrics: soft AUC, NDCG, lift, diversity, the downstream CTR model."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from icg.evaluation.metrics import diversity, lift_fraction, pair_intervals, truth_metrics
from icg.evaluation.recsys import ndcg_at_k, soft_auc, train_rec_model


def test_soft_auc_equals_roc_auc_on_hard_labels_with_ties():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=400), 1)
    y = (rng.random(400) < 0.3).astype(float)
    assert soft_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_soft_auc_is_the_expected_auc_over_bernoulli_clicks():
    rng = np.random.default_rng(1)
    s, p = rng.normal(size=60), rng.uniform(0.05, 0.9, 60)
    y = rng.random((3000, 60)) < p  # (draws, items) clicks
    y = y[(y.sum(1) > 0) & (y.sum(1) < 60)]
    # every draw's ROC AUC at once (Mann-Whitney on ranks; s has no ties), checked on a few
    ranks = np.argsort(np.argsort(s)) + 1.0  # (60,) 1-based
    n1 = y.sum(1)
    draws = ((y * ranks).sum(1) - n1 * (n1 + 1) / 2) / (n1 * (60 - n1))
    assert draws[:5] == pytest.approx([roc_auc_score(d, s) for d in y[:5]], abs=1e-12)
    assert soft_auc(s, p) == pytest.approx(np.mean(draws), abs=0.01)


def test_ndcg_perfect_and_reversed():
    gains = np.array([3.0, 2.0, 1.0, 0.0])
    groups = np.zeros(4)
    assert ndcg_at_k(gains, gains, groups) == pytest.approx(1.0)
    assert ndcg_at_k(-gains, gains, groups) < 0.7


def test_lift_fraction():
    assert lift_fraction(0.2, 0.2, 0.6) == 0.0
    assert lift_fraction(0.6, 0.2, 0.6) == 1.0
    assert lift_fraction(0.3, 0.2, 0.6) == pytest.approx(0.25)
    assert np.isnan(lift_fraction(0.3, 0.2, 0.2))


def test_diversity_zero_for_identical_covers():
    e = np.ones((4, 3))
    assert diversity(e, np.array([0, 0, 1, 1])) == pytest.approx(0.0, abs=1e-6)
    e2 = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=float)
    assert diversity(e2, np.array([0, 0, 1, 1])) == pytest.approx(0.5)


def test_truth_metrics_columns():
    n = 6
    scores = {k: np.linspace(0, 1, n) for k in ("aesthetic", "relevance", "taste_match", "ctr")}
    scores |= {"motif_ok": np.ones(n, bool), "palette_ok": np.zeros(n, bool)}
    m = truth_metrics(scores, np.array([1, 1, 0, 0, 0, 0], bool))
    assert m["fidelity_motif"] == 1.0 and m["fidelity_palette"] == 0.0
    assert m["true_ctr_coldstart"] == pytest.approx(0.1)


def test_pair_intervals_are_normal_intervals_of_each_mean_over_pairs():
    ctr = np.array([0.1, 0.3, 0.2, 0.4])
    out = pair_intervals({"icg": {"true_ctr": ctr, "preference_score": np.full(4, 0.5)}})
    half = 1.959964 * ctr.std(ddof=1) / 2.0  # z_0.975 * s.d. / sqrt(4)
    ci = out["icg"]["true_ctr"]
    assert ci["n"] == 4 and ci["mean"] == pytest.approx(0.25)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((0.25 - half, 0.25 + half), abs=1e-5)
    flat = out["icg"]["preference_score"]
    assert flat["ci_low"] == flat["mean"] == flat["ci_high"] == pytest.approx(0.5)


def test_rec_model_learns_user_image_interaction():
    """Clicks depend on u·v: the model must rank held-out pairs far better than chance."""
    rng = np.random.default_rng(0)
    n, d = 20_000, 4
    u, v = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    pos = rng.integers(0, 5, n)
    p = 1 / (1 + np.exp(-(2.0 * (u * v).sum(1) - 1.0))) / (1 + pos)
    y = rng.random(n) < p
    items = [f"i{k % 50}" for k in range(n)]
    model = train_rec_model(u[:15000], v[:15000], items[:15000], pos[:15000], y[:15000], epochs=4)
    s = model.score(u[15000:], v[15000:], items[15000:])
    assert soft_auc(s, p[15000:] * (1 + pos[15000:])) > 0.8
