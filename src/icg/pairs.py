"""(User, item) pairs: which pairs `icg generate` and every evaluated method draw a cover for.

Pairs are chosen from observable data only (user embeddings and the click log), never from the
truth, so an evaluation on real data picks its pairs the same way.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from icg.data.safety import open_regular
from icg.segments import segment_users

PAIR_COLUMNS = ["user_id", "item_id"]


def choose_pairs(data, n_users: int, n_items: int, seed: int = 0, n_cold: int = 1) -> pd.DataFrame:
    """Users spread over embedding clusters (taste segments show up there) plus ``n_cold`` users
    with no history, crossed with ``n_items`` random items: ``n_users * n_items`` rows, user-major.

    Args:
        data: a `PlatformData`.
        n_users: users in all (warm and cold).
        n_items: items per user (the same items for every user).
        seed: the k-means seed and the draw of cold users and items.
        n_cold: users without impressions (cold start) among the ``n_users``.
    """

    rng = np.random.default_rng(seed)
    users = data.users.reset_index(drop=True)
    seen = set(data.impressions["user_id"]) if data.impressions is not None else set()
    cold = users[~users["user_id"].isin(seen)]
    warm = users[users["user_id"].isin(seen)]
    n_cold = min(n_cold, len(cold), n_users)
    n_warm = min(n_users - n_cold, len(warm))
    labels, _ = segment_users(np.stack(warm["embedding"].to_numpy()), max(n_warm, 1), seed)
    # one warm user per cluster: the first of each, in label order
    picked = [warm["user_id"].iloc[np.flatnonzero(labels == s)[0]] for s in np.unique(labels)]
    picked = picked[:n_warm]
    picked += list(cold["user_id"].iloc[rng.permutation(len(cold))[:n_cold]])
    items = list(data.items["item_id"].iloc[rng.permutation(len(data.items))[:n_items]])
    return pd.DataFrame([(u, i) for u in picked for i in items], columns=PAIR_COLUMNS)


def read_pairs(path: str | Path) -> pd.DataFrame:
    """Pairs from a parquet file with ``user_id`` and ``item_id`` columns (ids as strings).

    Raises:
        ValueError: naming the file: not a regular file, not parquet, or a missing column.
    """

    try:
        with open_regular(path) as fp:  # a FIFO or device is refused before it is opened
            frame = pd.read_parquet(io.BytesIO(fp.read()))
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"{path}: cannot read pairs ({err}); expected a parquet file") from err
    missing = set(PAIR_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}; expected {PAIR_COLUMNS}")
    return frame[PAIR_COLUMNS].astype(str)


def check_pairs(pairs: pd.DataFrame, data, *, users: bool = True) -> pd.DataFrame:
    """``pairs`` unchanged when every item (and, with ``users``, every user) is a kept row of
    ``data``; else ValueError naming the unknown ids, before any model is loaded."""
    for column, table, needed in (("item_id", data.items, True), ("user_id", data.users, users)):
        if not needed:
            continue
        known = set(table[column]) if table is not None else set()
        unknown = sorted(set(pairs[column]) - known)
        if unknown:
            shown = ", ".join(repr(v[:40]) for v in unknown[:3])
            raise ValueError(
                f"pairs: {len(unknown)} unknown {column}(s) ({shown}{', ...' if len(unknown) > 3 else ''}); "
                "ids must be kept rows of the data folder (see icg data validate)"
            )
    return pairs
