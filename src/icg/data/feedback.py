"""Implicit feedback (PixelRec / MovieLens style: user_id, item_id, timestamp) with sampled
negatives."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from icg.data.errors import DataError
from icg.data.readers import SUFFIXES, find_table_file, read_raw
from icg.data.rejects import prepare_rejects_dir, write_rejects
from icg.data.schemas import FEEDBACK
from icg.data.validate import Refs, validate_table

logger = logging.getLogger(__name__)

FEEDBACK_NAMES = ("feedback", "interactions", "ratings")
"""File stems looked for when ``path`` is a folder."""


def _ids(table: pd.DataFrame | Iterable[object] | None, column: str) -> list[str] | None:
    if table is None:
        return None
    if isinstance(table, pd.DataFrame):
        if column not in table.columns:
            raise ValueError(f"expected a frame with a {column!r} column, got {list(table)}")
        table = table[column]
    return sorted({str(v) for v in table})


def _feedback_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    for name in FEEDBACK_NAMES:
        file = find_table_file(path, name)
        if file is not None:
            return file
    names = ", ".join(f"{n}{s}" for n in FEEDBACK_NAMES for s in SUFFIXES)
    raise DataError(f"{path}: no implicit feedback table (expected one of {names})", file=path)


def sample_negatives(
    users: np.ndarray, items: np.ndarray, num_items: int, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``k`` negatives per positive uniformly from the items each user never interacted with.

    Args:
        users: (P,) user codes of the positives.
        items: (P,) item codes in [0, num_items) of the positives.
        num_items: catalog size.
        k: negatives per positive.
        rng: the random generator (users are visited in code order, so results are seeded).

    Returns:
        (positive_index, negative_item): (N,) index into the positives and (N,) item codes.
        Users who interacted with every item get no negatives.
    """
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    out_pos: list[np.ndarray] = []
    out_item: list[np.ndarray] = []
    for group in np.split(order, bounds):
        if group.size == 0:
            continue
        seen = np.unique(items[group])
        if seen.size >= num_items:
            continue
        need = np.repeat(group, k)  # (m * k,) positive indices
        if seen.size * 2 > num_items:  # dense user: draw from the explicit complement
            pool = np.setdiff1d(np.arange(num_items), seen)
            draws = pool[rng.integers(0, pool.size, size=need.size)]
        else:  # sparse user: rejection sampling
            draws = rng.integers(0, num_items, size=need.size)
            clash = np.isin(draws, seen)
            while clash.any():
                draws[clash] = rng.integers(0, num_items, size=int(clash.sum()))
                clash = np.isin(draws, seen)
        out_pos.append(need)
        out_item.append(draws)
    if not out_pos:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(out_pos), np.concatenate(out_item)


def read_implicit_feedback(
    path: str | Path,
    *,
    items: pd.DataFrame | Iterable[object],
    users: pd.DataFrame | Iterable[object] | None,
    negatives_per_positive: int = 4,
    seed: int = 0,
    rejects_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Read implicit feedback, validate it, and add sampled negatives.

    Every row is a positive (clicked=True). For each positive, ``negatives_per_positive`` items
    the user never interacted with are drawn uniformly (with replacement) and get the positive's
    timestamp and clicked=False. Rows with unknown users/items, nulls or bad timestamps are
    rejected (to ``<rejects_dir>/feedback.parquet`` when a rejects folder is given).

    Args:
        path: a feedback file, or a folder holding ``feedback.*``/``interactions.*``/``ratings.*``.
        items: the catalog: a frame with ``item_id`` or the ids themselves.
        users: known users (frame with ``user_id`` or ids); None accepts any user.
        negatives_per_positive: negatives drawn per positive.
        seed: seed of the negative sampler; the same inputs and seed give the same frame.
        rejects_dir: a dedicated folder for rejects (none written by default).

    Returns:
        user_id, item_id, timestamp (int64), clicked (bool); each positive followed by its
        negatives. The `TableReport` is in ``frame.attrs["report"]``.

    Raises:
        DataError: missing file/column, or no valid row.
    """
    if negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive must be >= 0, got {negatives_per_positive}")
    file = _feedback_file(Path(path))
    catalog = _ids(items, "item_id")
    known_users = _ids(users, "user_id")
    refs = {"items": Refs(Path("items"), set(catalog))}
    if known_users is not None:
        refs["users"] = Refs(Path("users"), set(known_users))
    root = file.parent.resolve()
    folder = prepare_rejects_dir(rejects_dir, root, [file]) if rejects_dir is not None else None
    result = validate_table(read_raw(file), FEEDBACK, root=root, refs=refs)
    if folder is not None:
        rows = result.report.rows_rejected
        result.report.rejects_file = write_rejects(result.rejects, folder, "feedback", rows)
    positives = result.frame[["user_id", "item_id", "timestamp"]].reset_index(drop=True)
    user_codes, _ = pd.factorize(positives["user_id"], sort=True)
    item_code = {item: i for i, item in enumerate(catalog)}
    item_codes = positives["item_id"].map(item_code).to_numpy(dtype=np.int64)
    rng = np.random.default_rng(seed)
    pos_idx, neg_items = sample_negatives(
        user_codes, item_codes, len(catalog), negatives_per_positive, rng
    )
    negatives = pd.DataFrame(
        {
            "user_id": positives["user_id"].to_numpy()[pos_idx],
            "item_id": np.asarray(catalog, dtype=object)[neg_items],
            "timestamp": positives["timestamp"].to_numpy()[pos_idx],
            "clicked": False,
            "_order": pos_idx,
        }
    )
    positives = positives.assign(clicked=True, _order=np.arange(len(positives)))
    frame = pd.concat([positives, negatives], ignore_index=True)
    frame = frame.sort_values(["_order", "clicked"], ascending=[True, False], kind="stable")
    frame = frame.drop(columns="_order").reset_index(drop=True)
    frame["timestamp"] = frame["timestamp"].astype("int64")
    frame["clicked"] = frame["clicked"].astype(bool)
    frame.attrs["report"] = result.report
    logger.info(
        "%s: %d positives kept of %d read, %d negatives sampled",
        file.name,
        result.report.rows_kept,
        result.report.rows_read,
        len(negatives),
    )
    return frame
