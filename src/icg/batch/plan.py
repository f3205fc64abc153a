"""The work of a batch: user segments, (segment, item) units, and their partitions.

Covers are drawn per (segment, item), never per (user, item): every user of a segment shares
the segment's covers of an item, so the work is the distinct (segment, item) units the wanted
(user, item) pairs need. Units are ordered by item, then segment, and cut into partitions of
``partition_size``: one partition is one manifest part file and the unit of resume, and a worker
encodes an item's features once for all the segments that follow it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from icg.generation import pair_seed
from icg.io import atomic_path
from icg.layout import (
    COVERS_DIR,
    PLAN_DIR,
    PLAN_SEGMENTS_FILE,
    PLAN_UNITS_FILE,
    PLAN_USERS_FILE,
)
from icg.safety import output_path, safe_name
from icg.segments import Segments, nearest_segments, segment, user_choices

__all__ = [
    "PLAN_DIR",
    "Segments",
    "nearest_segments",
    "segment",
    "user_choices",
]
UNIT_ROW_GROUP = 4096
"""Rows per parquet row group of the plan's units: a worker reads one partition's row groups."""


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
    return COVERS_DIR, f"s{segment:05d}", f"{safe_name(item_id)}_c{candidate}.png"


def cover_path(segment: int, item_id: str, candidate: int) -> str:
    """Where candidate k of (segment, item) lives, relative to OUT."""
    return "/".join(cover_parts(segment, item_id, candidate))


def save_plan(out: Path, segments: Segments, units: pd.DataFrame) -> None:
    """Write the plan (segments, users' segments, units) under ``OUT/plan/`` atomically."""
    for name, frame in (
        (PLAN_SEGMENTS_FILE, segments.table),
        (PLAN_USERS_FILE, segments.users),
        (PLAN_UNITS_FILE, units),
    ):
        with atomic_path(output_path(out, PLAN_DIR, name)) as tmp:
            frame.to_parquet(tmp, index=False, row_group_size=UNIT_ROW_GROUP)


def load_segments(out: Path) -> Segments:
    """The segments of the plan written by `save_plan`."""
    root = Path(out) / PLAN_DIR
    table = pd.read_parquet(root / PLAN_SEGMENTS_FILE)
    table["embedding"] = [np.asarray(e, dtype=np.float32) for e in table["embedding"]]
    return Segments(table, pd.read_parquet(root / PLAN_USERS_FILE))


def load_plan(out: Path) -> tuple[Segments, pd.DataFrame]:
    """The plan written by `save_plan`: segments and every unit."""
    return load_segments(out), pd.read_parquet(Path(out) / PLAN_DIR / PLAN_UNITS_FILE)


def partition_units(out: Path, partition: int) -> pd.DataFrame:
    """One partition's units, read alone: units are stored in partition order in row groups
    of `UNIT_ROW_GROUP` rows, so the filter skips the other row groups by their statistics."""
    path = Path(out) / PLAN_DIR / PLAN_UNITS_FILE
    return pd.read_parquet(path, filters=[("partition", "=", partition)])


def plan_partitions(out: Path) -> list[int]:
    """Every partition of the plan, in order."""
    path = Path(out) / PLAN_DIR / PLAN_UNITS_FILE
    return sorted(
        int(p) for p in pd.read_parquet(path, columns=["partition"])["partition"].unique()
    )
