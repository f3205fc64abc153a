"""The work of a batch: user segments, (segment, item) units, and their partitions.

Covers are drawn per (segment, item), never per (user, item): every user of a segment shares
the segment's covers of an item, so the work is the distinct (segment, item) units the wanted
(user, item) pairs need. Units are ordered by item, then segment, and cut into partitions of
``partition_size``: one partition is one manifest part file and the unit of resume, and a worker
encodes an item's features once for all the segments that follow it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from icg.generation import pair_seed, segment_users
from icg.io import atomic_path
from icg.safety import output_path, safe_name

PLAN_DIR = "plan"
UNIT_ROW_GROUP = 4096
"""Rows per parquet row group of the plan's units: a worker reads one partition's row groups."""

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
        keys = [f"segment-{s}" for s in range(len(centroids))]
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
        keys = [f"segment-{v}" for v in names]
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


def work_units(
    pairs: Iterable[tuple[str, str]], choices: dict[str, Iterable[int]]
) -> list[tuple[int, str]]:
    """The distinct (segment, item) units that (user, item) ``pairs`` need, where a user needs
    the covers of every segment in ``choices[user]``; ordered by item, then segment."""
    units = {(int(s), str(i)) for u, i in pairs for s in choices[u]}
    return sorted(units, key=lambda unit: (unit[1], unit[0]))


def auto_partition_size(n_units: int) -> int:
    """About 64 partitions (enough to spread over a pool of workers), each of 8 to 1,024 units
    (few enough part files for a large catalogue)."""
    return int(np.clip(n_units // 64, 8, 1024))


def unit_table(
    units: list[tuple[int, str]],
    segments: pd.DataFrame,
    items: pd.DataFrame,
    partition_size: int | None,
    seed: int,
) -> pd.DataFrame:
    """One row per unit: unit, partition, segment, key, item_id, title, image, seed (the seed of
    candidate 0; candidate k's is ``pair_seed(seed, key, item_id, k)``)."""
    keys = segments.set_index("segment")["key"]
    info = items.set_index("item_id")
    frame = pd.DataFrame(units, columns=["segment", "item_id"])
    frame.insert(0, "unit", np.arange(len(frame), dtype=np.int64))
    size = partition_size or auto_partition_size(len(frame))
    frame.insert(1, "partition", frame["unit"] // size)
    frame["key"] = keys.loc[frame["segment"]].to_numpy()
    frame["title"] = info.loc[frame["item_id"], "title"].to_numpy()
    frame["image"] = info.loc[frame["item_id"], "image"].astype(str).to_numpy()
    pairs = zip(frame["key"], frame["item_id"], strict=True)
    frame["seed"] = [pair_seed(seed, k, i) for k, i in pairs]
    return frame


def cover_parts(segment: int, item_id: str, candidate: int) -> tuple[str, str, str]:
    """The path components of candidate k of (segment, item) under OUT (the item id through
    `icg.safety.safe_name`)."""
    return "covers", f"s{segment:05d}", f"{safe_name(item_id)}_c{candidate}.png"


def cover_path(segment: int, item_id: str, candidate: int) -> str:
    """Where candidate k of (segment, item) lives, relative to OUT."""
    return "/".join(cover_parts(segment, item_id, candidate))


def save_plan(out: Path, segments: Segments, units: pd.DataFrame) -> None:
    """Write the plan (segments, users' segments, units) under ``OUT/plan/`` atomically."""
    for name, frame in (
        ("segments", segments.table),
        ("users", segments.users),
        ("units", units),
    ):
        with atomic_path(output_path(out, PLAN_DIR, f"{name}.parquet")) as tmp:
            frame.to_parquet(tmp, index=False, row_group_size=UNIT_ROW_GROUP)


def load_segments(out: Path) -> Segments:
    """The segments of the plan written by `save_plan`."""
    root = Path(out) / PLAN_DIR
    table = pd.read_parquet(root / "segments.parquet")
    table["embedding"] = [np.asarray(e, dtype=np.float32) for e in table["embedding"]]
    return Segments(table, pd.read_parquet(root / "users.parquet"))


def load_plan(out: Path) -> tuple[Segments, pd.DataFrame]:
    """The plan written by `save_plan`: segments and every unit."""
    return load_segments(out), pd.read_parquet(Path(out) / PLAN_DIR / "units.parquet")


def partition_units(out: Path, partition: int) -> pd.DataFrame:
    """One partition's units, read alone: units are stored in partition order in row groups
    of `UNIT_ROW_GROUP` rows, so the filter skips the other row groups by their statistics."""
    path = Path(out) / PLAN_DIR / "units.parquet"
    return pd.read_parquet(path, filters=[("partition", "=", partition)])


def plan_partitions(out: Path) -> list[int]:
    """Every partition of the plan, in order."""
    path = Path(out) / PLAN_DIR / "units.parquet"
    return sorted(
        int(p) for p in pd.read_parquet(path, columns=["partition"])["partition"].unique()
    )
