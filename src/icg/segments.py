"""User segments: users grouped so that covers are drawn once per (segment, item).

One implementation for every caller: `icg.generation.generate_covers` (``segments=S``) and the
batch plan (`icg.batch.plan`) both segment users here, so a segment of the same users has the
same key, centroid and seeds in both. k-means follows scikit-learn (Lloyd's algorithm with
k-means++ seeding, Arthur & Vassilvitskii 2007); large tables fit it on a seeded sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def segment_key(segment: int | str) -> str:
    """The seed key of a segment (what `icg.generation.pair_seed` takes as the user id)."""
    return f"segment-{segment}"


def segment_users(
    embeddings: np.ndarray, n_segments: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """k-means over user embeddings (U, E): labels (U,) and centroids (S, E)."""
    from sklearn.cluster import KMeans  # import cost: scikit-learn takes seconds; only k-means

    n_segments = min(n_segments, len(embeddings))
    km = KMeans(n_clusters=n_segments, n_init=4, random_state=seed).fit(embeddings)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


KMEANS_FIT_ROWS = 200_000
"""k-means is fitted on a seeded sample of this many users; every user then joins the nearest
centroid (Sculley 2010's observation that a sample fixes the centroids of large data)."""


@dataclass
class Segments:
    """Users grouped into segments.

    Args:
        table: one row per segment: ``segment`` (0..S-1), ``key`` (the seed key, as in
            `icg.generation`: ``segment-<s>``, or the user id for per-user segments),
            ``embedding`` (the embedding covers are drawn with: centroid or member mean),
            ``n_users``.
        users: ``user_id`` → ``segment``.
    """

    table: pd.DataFrame
    users: pd.DataFrame

    def embeddings(self) -> np.ndarray:
        """(S, E) float32 segment embeddings in ``segment`` order."""
        return np.stack(self.table["embedding"].to_numpy()).astype(np.float32)


def _nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Index of the nearest centroid (S, E) for every row of x (N, E)."""
    out = []
    for start in range(0, len(x), chunk):
        d = ((x[start : start + chunk, None, :] - centroids[None]) ** 2).sum(-1)  # (n, S)
        out.append(d.argmin(1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def segment(users: pd.DataFrame, by: str, n_segments: int, seed: int) -> Segments:
    """Segment users ``by`` ``kmeans`` (``n_segments`` clusters of the embeddings), ``column``
    (the table's ``segment`` column) or ``user`` (one segment per user).

    Users are taken in ``user_id`` order, so the result does not depend on how the table was
    partitioned on disk.
    """
    users = users.sort_values("user_id", kind="stable").reset_index(drop=True)
    emb = np.stack(users["embedding"].to_numpy()).astype(np.float32)  # (U, E)
    ids = users["user_id"].astype(str).to_numpy()
    if by == "kmeans":
        if len(users) > KMEANS_FIT_ROWS:
            rows = np.random.default_rng(seed).choice(len(users), KMEANS_FIT_ROWS, replace=False)
            _, centroids = segment_users(emb[np.sort(rows)], n_segments, seed)
            labels = _nearest(emb, centroids)
        else:
            labels, centroids = segment_users(emb, n_segments, seed)
        keys = [segment_key(s) for s in range(len(centroids))]
    elif by == "column":
        if "segment" not in users.columns:
            raise ValueError("segment_by=column: the users table has no 'segment' column")
        if users["segment"].isna().any():
            bad = users.loc[users["segment"].isna(), "user_id"].tolist()[:3]
            raise ValueError(f"segment_by=column: users without a segment, e.g. {bad}")
        values = users["segment"].astype(str)
        names = sorted(values.unique())
        labels = values.map({v: s for s, v in enumerate(names)}).to_numpy()
        centroids = np.stack([emb[labels == s].mean(0) for s in range(len(names))])
        keys = [segment_key(v) for v in names]
    elif by == "user":
        labels = np.arange(len(users))
        centroids, keys = emb, list(ids)
    else:
        raise ValueError(f"segment_by: expected kmeans, column or user, got {by!r}")
    labels = np.asarray(labels, dtype=np.int64)
    table = pd.DataFrame(
        {
            "segment": np.arange(len(keys), dtype=np.int64),
            "key": keys,
            "embedding": list(centroids.astype(np.float32)),
            "n_users": np.bincount(labels, minlength=len(keys)).astype(np.int64),
        }
    )
    return Segments(table, pd.DataFrame({"user_id": ids, "segment": labels}))


def nearest_segments(
    user_embeddings: np.ndarray, segment_embeddings: np.ndarray, own: np.ndarray, m: int | None
) -> np.ndarray:
    """The ``m`` segments whose covers a user chooses from: (U, m) indices, the user's own
    segment first, then the nearest others by embedding distance (``None``: every segment)."""
    n = len(segment_embeddings)
    m = n if m is None else min(m, n)
    d = ((user_embeddings[:, None, :] - segment_embeddings[None]) ** 2).sum(-1)  # (U, S)
    d[np.arange(len(own)), own] = -np.inf  # own segment first
    return np.argsort(d, axis=1, kind="stable")[:, :m]


def user_choices(segments: Segments, users: pd.DataFrame, m: int | None) -> dict[str, np.ndarray]:
    """user_id → the segments whose covers the user may get: their own, then the nearest
    others, ``m`` in all (``None``: every segment). ``users`` holds user_id and embedding."""
    own = segments.users.set_index("user_id")["segment"]
    if m == 1:
        return {u: np.array([s]) for u, s in own.items()}
    emb = users.set_index("user_id").loc[own.index, "embedding"]
    emb = np.stack(emb.to_numpy()).astype(np.float32)  # (U, E)
    near = nearest_segments(emb, segments.embeddings(), own.to_numpy(), m)
    return dict(zip(own.index, near, strict=True))
