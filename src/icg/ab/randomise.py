"""Hash-based randomisation: a user's arm is a pure function of (salt, user id)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np


def hash_unit(user_ids: Iterable[str], salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per user from sha256(salt:user_id): stable across runs,
    machines and Python versions, independent between salts."""
    out = [
        int.from_bytes(hashlib.sha256(f"{salt}:{u}".encode()).digest()[:8], "big") / 2**64
        for u in user_ids
    ]
    return np.asarray(out, dtype=np.float64)


def assign_arms(
    user_ids: Sequence[str], arms: Sequence[str], salt: str, weights: Sequence[float] | None = None
) -> np.ndarray:
    """The arm index (N,) of each user: its hash unit falls in the arm's share of [0, 1).

    Args:
        user_ids: user ids (strings).
        arms: arm names, in order.
        salt: the experiment's name: another salt reshuffles users independently.
        weights: each arm's share (any scale); default equal.
    """
    w = np.ones(len(arms)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != len(arms) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights: expected {len(arms)} non-negative shares, got {list(w)}")
    edges = np.cumsum(w / w.sum())[:-1]
    return np.searchsorted(edges, hash_unit(user_ids, salt), side="right")
