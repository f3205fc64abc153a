"""Read and validate the items and users tables a batch needs, one file or a partitioned folder.

A table is ``DIR/<name>.parquet|csv|jsonl`` (as `icg.data.load_dataset` reads it) or a folder
``DIR/<name>/`` (or ``DIR/<name>.parquet/``) of parquet files, hive partitions such as
``users/region=eu/part-0.parquet`` allowed (the partition key becomes a column). Rows go through
the same validation as everywhere else; rejects are written to ``OUT/rejects/<name>.parquet``.
Nothing under ``DIR/truth/`` is read, and the impressions table is not needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds

from icg.data import REJECTS_SCHEMA, DataError, find_table_file, read_raw, write_parquet
from icg.data.images import ImageChecker
from icg.data.readers import RawTable
from icg.data.schemas import ITEMS, USERS, TableSpec
from icg.data.validate import TRUTH_DIR, validate_table

logger = logging.getLogger(__name__)


def table_source(root: Path, name: str) -> Path | None:
    """The file or partitioned folder that holds table ``name`` in ``root`` (a file wins)."""
    file = find_table_file(root, name)
    if file is not None:
        return file
    for folder in (root / name, root / f"{name}.parquet"):
        if folder.is_dir():
            return folder
    return None


def read_partitioned(folder: Path) -> RawTable:
    """Every parquet file under ``folder`` as one raw table (hive partition keys as columns)."""

    files = sorted(p for p in folder.rglob("*") if p.suffix in (".parquet", ".pq"))
    for file in files:  # checked before anything opens them (a FIFO would block a reader)
        if file.is_symlink() or not file.is_file():
            raise DataError(f"{file}: a table part must be a regular file", file=file)
        if TRUTH_DIR in file.relative_to(folder.parent).parts:
            raise DataError(f"{file}: lies in truth/, which is never read", file=file)
    if not files:
        raise DataError(f"{folder}: a table folder with no parquet files", file=folder)
    dataset = ds.dataset([str(f) for f in files], format="parquet", partitioning="hive")
    frame = dataset.to_table().to_pandas(integer_object_nulls=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in frame.columns:  # partition keys arrive as dictionary columns
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(object)
    return RawTable(folder, frame.reset_index(drop=True), len(frame))


def _read(root: Path, spec: TableSpec, rejects: Path, check_images: bool) -> pd.DataFrame:
    source = table_source(root, spec.name)
    if source is None:
        raise DataError(
            f"{root}: missing table {spec.name!r} (a file {spec.name}.parquet|csv|jsonl or a "
            f"folder {spec.name}/ of parquet files)"
        )
    if source.resolve().is_relative_to(root / TRUTH_DIR):
        raise DataError(f"{source}: links into truth/, which is never read", file=source)
    raw = read_raw(source) if source.is_file() else read_partitioned(source)
    checker = ImageChecker() if check_images else None
    result = validate_table(raw, spec, root=root, checker=checker)
    write_parquet(result.rejects, rejects / f"{spec.name}.parquet", schema=REJECTS_SCHEMA)
    if result.report.rows_rejected:
        logger.warning(
            "%s: %d rows rejected (see %s)",
            spec.name,
            result.report.rows_rejected,
            rejects / f"{spec.name}.parquet",
        )
    return result.frame


def read_catalog(
    data: str | Path, rejects: str | Path, check_images: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The validated ``(items, users)`` of a data folder.

    Args:
        data: the data folder.
        rejects: where the rejected rows of each table are written.
        check_images: open the header of every reference image (paths are checked anyway).

    Returns:
        items (item_id, title, image as an absolute path, ...) and users (user_id, embedding as
        float32 arrays, extra columns such as ``segment`` passed through).

    Raises:
        DataError: a table is missing or unreadable, or has no valid row.
    """
    root = Path(data).resolve()
    if not root.is_dir():
        raise DataError(f"{root}: not a data folder (expected a directory)", file=root)
    items = _read(root, ITEMS, Path(rejects), check_images)
    users = _read(root, USERS, Path(rejects), check_images=False)
    return items, users
