"""Impressions and clicks from a position-based model.

P(click) = exam(position) * sigmoid(bias + w_rel*relevance + w_aes*aesthetic
                                     + w_taste*taste_match + popularity + user_bias)

Positions come from the platform's legacy ranker, which pulls popular items and light covers to
the top: a learner that ignores examination mistakes "light" for "liked".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icg.world.config import WorldConfig


def examination(position: np.ndarray, decay: float) -> np.ndarray:
    """Probability that a slot is looked at (position-based model, Craswell et al. 2008)."""
    return (1.0 + np.asarray(position, dtype=np.float64)) ** -decay


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def attractiveness_logit(
    cfg: WorldConfig,
    relevance: np.ndarray,
    aesthetic: np.ndarray,
    taste: np.ndarray,
    popularity: np.ndarray,
    user_bias: np.ndarray,
) -> np.ndarray:
    """The logit of P(click | examined); all arguments broadcast."""
    return (
        cfg.bias
        + cfg.w_rel * relevance
        + cfg.w_aes * aesthetic
        + cfg.w_taste * taste
        + popularity
        + user_bias
    )


@dataclass
class ImpressionLog:
    """Simulated impressions: arrays of equal length N."""

    user: np.ndarray  # (N,) user index
    item: np.ndarray  # (N,) item index
    variant: np.ndarray  # (N,) variant index of the shown cover
    position: np.ndarray  # (N,)
    p_click: np.ndarray  # (N,) the true click probability (truth only)
    clicked: np.ndarray  # (N,) bool
    timestamp: np.ndarray  # (N,) int64 seconds


def simulate(
    cfg: WorldConfig,
    rng: np.random.Generator,
    active_users: np.ndarray,
    popularity: np.ndarray,
    cover_brightness: np.ndarray,
    logit_fn,
) -> ImpressionLog:
    """Simulate pages of `page_size` impressions until `n_impressions` are shown.

    Args:
        active_users: indices of users with history.
        popularity: (I,) item popularity logits.
        cover_brightness: (I, V) brightness read off each variant (the legacy ranker sees it).
        logit_fn: (user (N,), item (N,), variant (N,)) -> attractiveness logits (N,).
    """
    n_items, n_var = cover_brightness.shape
    page = min(cfg.page_size, n_items)
    n_pages = -(-cfg.n_impressions // page)
    activity = rng.lognormal(0.0, 1.0, len(active_users))
    users = rng.choice(active_users, size=n_pages, p=activity / activity.sum())
    item_p = np.exp(popularity) / np.exp(popularity).sum()
    # items per page without replacement: Gumbel top-k on popularity
    g = np.log(item_p)[None] + rng.gumbel(size=(n_pages, n_items))
    items = np.argpartition(-g, page - 1, axis=1)[:, :page]  # (P, page)
    variants = rng.integers(n_var, size=(n_pages, page))
    ranker = (
        popularity[items]
        + cfg.legacy_brightness_bias * cover_brightness[items, variants]
        + rng.normal(0, 1.0, items.shape)
    )
    order = np.argsort(-ranker, axis=1)
    items = np.take_along_axis(items, order, 1)
    variants = np.take_along_axis(variants, order, 1)
    positions = np.broadcast_to(np.arange(page), items.shape)
    user = np.repeat(users, page)
    item, variant, position = items.ravel(), variants.ravel(), positions.ravel()
    p = examination(position, cfg.position_decay) * sigmoid(logit_fn(user, item, variant))
    clicked = rng.random(len(p)) < p
    t0 = 1_767_225_600  # 2026-01-01
    ts = t0 + np.repeat(np.sort(rng.integers(0, 90 * 86400, n_pages)), page)
    keep = slice(0, cfg.n_impressions)
    return ImpressionLog(
        user[keep], item[keep], variant[keep], position[keep], p[keep], clicked[keep], ts[keep]
    )
