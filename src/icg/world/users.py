"""Users: taste segments over style, individual noise, and a noisy platform embedding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icg.world.attributes import NUM_STYLE
from icg.world.config import WorldConfig


@dataclass
class Population:
    """The hidden truth about users and what the platform sees of them.

    Args:
        segment: (U,) taste segment of each user.
        taste: (U, S) preferred style coordinate per dimension, in [0, 1].
        weights: (U, S) how much each dimension matters (rows sum to 1).
        bias: (U,) general click propensity (logit offset).
        cold_start: (U,) bool, users with no history.
        embedding: (U, E) float32 platform embedding: noisy projection of taste + activity.
    """

    segment: np.ndarray
    taste: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    cold_start: np.ndarray
    embedding: np.ndarray


def taste_match(style: np.ndarray, taste: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """1 - weighted L1 distance between style (..., S) and taste (..., S): in [0, 1]."""
    return 1.0 - (weights * np.abs(style - taste)).sum(-1)


def make_population(cfg: WorldConfig, rng: np.random.Generator) -> Population:
    """Draw users: segment centroids on the style levels, individual noise, embeddings."""
    n, s = cfg.n_users, NUM_STYLE
    centroids = rng.integers(0, 3, size=(cfg.n_segments, s)) / 2.0  # (G, S) on level coordinates
    seg_w = rng.dirichlet(np.full(s, cfg.segment_weight_concentration), size=cfg.n_segments)
    segment = rng.integers(cfg.n_segments, size=n)
    taste = np.clip(centroids[segment] + rng.normal(0, cfg.taste_noise, (n, s)), 0.0, 1.0)
    weights = seg_w[segment] * rng.uniform(0.8, 1.2, (n, s))
    weights = weights / weights.sum(-1, keepdims=True)
    bias = rng.normal(0, cfg.user_bias_std, n)
    cold = rng.random(n) < cfg.cold_start_fraction
    # platform embedding: linear mix of (taste-weighted) style preferences and unrelated activity
    taste_feat = np.concatenate([(taste - 0.5) * 2.0, weights * s - 1.0], axis=1)  # (U, 2S)
    a = rng.normal(0, 1 / np.sqrt(taste_feat.shape[1]), (taste_feat.shape[1], cfg.embedding_dim))
    activity = rng.normal(0, 1, (n, cfg.activity_dim))
    b = rng.normal(0, 1 / np.sqrt(max(cfg.activity_dim, 1)), (cfg.activity_dim, cfg.embedding_dim))
    emb = taste_feat @ a + activity @ b + rng.normal(0, cfg.embedding_noise, (n, cfg.embedding_dim))
    return Population(segment, taste, weights, bias, cold, emb.astype(np.float32))
