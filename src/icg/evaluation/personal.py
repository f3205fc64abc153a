"""Personal gain: a user-swap control for whether ICG's covers carry the user's taste.

For every evaluated (user A, item) pair with a warm user A, the same item's single-draw cover is
also made for a user B of another taste segment, on A's noise seed (only the user differs), and
both covers are scored by the truth for A:

    gain(A, item) = truth_ctr(A, cover made for A) - truth_ctr(A, cover made for B)

B is deterministic: among the evaluation's users of another segment (else all users of another
segment), the one whose platform embedding is farthest from A's. A cover that ignores the user
gives gain 0; a positive mean says the generator draws for its user. Segments come from
CoverWorld's truth (evaluation may read it; training never does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def swap_partners(
    users: Mapping[str, np.ndarray],
    segment: Mapping[str, int],
    swapped: list[str],
    pool: list[str],
) -> dict[str, str]:
    """Per user of ``swapped``: the user of another segment whose embedding is farthest away
    (Euclidean), looked for in ``pool`` first, then among every user of ``users``; users with no
    candidate of another segment are left out. Ties go to the first in ``pool`` / ``users`` order.

    Args:
        users: user id -> platform embedding (E,).
        segment: user id -> taste segment (every id of ``users``).
        swapped: the users who get a partner (A).
        pool: preferred partners (the evaluation's users).
    """
    partners = {}
    for a in swapped:
        for candidates in (pool, list(users)):
            other = [b for b in dict.fromkeys(candidates) if segment[b] != segment[a]]
            if other:
                dist = [float(np.linalg.norm(users[b] - users[a])) for b in other]
                partners[a] = other[int(np.argmax(dist))]
                break
    return partners


def mean_interval(diffs: np.ndarray, z: float = Z_95) -> dict[str, float | int]:
    """``{"mean", "ci_low", "ci_high", "n"}``: the mean of paired differences and its normal
    (Wald) interval ``mean ± z · sd / √n`` (sd with ddof 1; NaN bounds below two values)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    n = len(diffs)
    mean = float(diffs.mean()) if n else float("nan")
    half = z * float(diffs.std(ddof=1)) / np.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def personal_gain(
    truth, pairs: pd.DataFrame, own: np.ndarray, swapped: np.ndarray
) -> dict[str, float | int]:
    """`mean_interval` of ``truth_ctr(A, own) - truth_ctr(A, swapped)`` over ``pairs`` (user A,
    item); ``own`` and ``swapped`` are uint8 (N, H, W, 3) covers in pair order."""
    users, items = pairs["user_id"].tolist(), pairs["item_id"].tolist()
    mine = np.asarray(truth.score(own, users, items)["ctr"], dtype=np.float64)
    theirs = np.asarray(truth.score(swapped, users, items)["ctr"], dtype=np.float64)
    return mean_interval(mine - theirs)


# draws single-draw covers: (pairs, pair user -> embedding user) -> uint8 (N, H, W, 3)
SwapDraw = Callable[[pd.DataFrame, dict[str, str]], np.ndarray]


@dataclass
class SwapControl:
    """The personal-gain control of one evaluation.

    Args:
        truth: CoverWorld's `Truth` (scores, and each user's segment in ``truth.users``).
        data: the `PlatformData` (user embeddings).
        draw: ``icg``'s single draw on the pair user's seed with another user's embedding
            (`SwapDraw`); with an empty mapping, the plain single draw.
    """

    truth: object
    data: object
    draw: SwapDraw

    def partners(self, pairs: pd.DataFrame, cold: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
        """``(keep, partners)``: which pairs have a warm user with a swap partner (bool (N,)),
        and each such user's partner (`swap_partners`)."""
        segment = {str(u): int(s) for u, s in self.truth.users["segment"].items()}
        users = {
            str(u): np.asarray(e, dtype=np.float64)
            for u, e in zip(self.data.users["user_id"], self.data.users["embedding"], strict=True)
            if str(u) in segment
        }
        warm = ~np.asarray(cold, dtype=bool) & pairs["user_id"].astype(str).isin(users).to_numpy()
        evaluated = list(dict.fromkeys(pairs["user_id"].astype(str)))
        swapped = list(dict.fromkeys(pairs["user_id"].astype(str)[warm]))
        partners = swap_partners(users, segment, swapped, evaluated)
        return warm & pairs["user_id"].astype(str).isin(partners).to_numpy(), partners

    def swapped_ctr(self, pairs: pd.DataFrame, cold: np.ndarray) -> np.ndarray:
        """Per pair (user A, item), A's true CTR of the single draw made for A's partner on A's
        noise seed; NaN where A has no partner (`partners`)."""
        keep, partners = self.partners(pairs, cold)
        ctr = np.full(len(pairs), np.nan)
        if keep.any():
            kept = pairs[keep].reset_index(drop=True)
            theirs = self.draw(kept, partners)
            ctr[keep] = self.truth.score(theirs, kept["user_id"].tolist(),
                                         kept["item_id"].tolist())["ctr"]  # fmt: skip
        return ctr

    def __call__(
        self, pairs: pd.DataFrame, cold: np.ndarray, own: np.ndarray | None = None
    ) -> dict[str, float | int] | None:
        """``personal_gain`` over the warm pairs (None without any partner); ``own``: the
        single-draw covers of ``pairs`` when already drawn (``icg-single``)."""
        keep, partners = self.partners(pairs, cold)
        if not keep.any():
            return None
        kept = pairs[keep].reset_index(drop=True)
        mine = own[keep] if own is not None else self.draw(kept, {})
        theirs = self.draw(kept, partners)
        return personal_gain(self.truth, kept, mine, theirs)
