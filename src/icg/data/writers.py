"""Write tables as parquet, atomically (`icg.io.atomic_path`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from icg.data.schemas import SCHEMAS
from icg.io import atomic_path

logger = logging.getLogger(__name__)


def to_arrow(frame: pd.DataFrame, schema: pa.Schema | None = None) -> pa.Table:
    """Convert a frame to an arrow table, casting the columns ``schema`` names to its types.

    Columns not in ``schema`` (extra features) keep their inferred types.

    Args:
        frame: the rows to convert (index dropped).
        schema: the schema of the known columns, e.g. `icg.data.schemas.ITEMS_SCHEMA`.
    """
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if schema is None:
        return table
    for fld in schema:
        idx = table.schema.get_field_index(fld.name)
        if idx < 0:
            if not fld.nullable:
                raise ValueError(f"column {fld.name!r} is required by the schema but missing")
            continue
        table = table.set_column(idx, fld, table.column(idx).cast(fld.type))
    return table


def write_parquet(
    data: pd.DataFrame | pa.Table, path: str | Path, *, schema: pa.Schema | None = None
) -> Path:
    """Write ``data`` to ``path`` as parquet, atomically.

    Args:
        data: a DataFrame or arrow table.
        path: the destination file; its folder is created if needed.
        schema: optional schema for the known columns (see `to_arrow`).

    Returns:
        The path written.
    """
    path = Path(path)
    table = data if isinstance(data, pa.Table) else to_arrow(data, schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    logger.debug("wrote %d rows to %s", table.num_rows, path)
    return path


def write_table(name: str, frame: pd.DataFrame, folder: str | Path) -> Path:
    """Write one of the standard tables as ``<folder>/<name>.parquet`` with its schema.

    Paths (items.image, impressions.cover) must already be relative to ``folder``.

    Args:
        name: "items", "users", "impressions" or "feedback".
        frame: the rows.
        folder: the data folder.
    """
    if name not in SCHEMAS:
        raise ValueError(f"unknown table {name!r}, expected one of {sorted(SCHEMAS)}")
    return write_parquet(frame, Path(folder) / f"{name}.parquet", schema=SCHEMAS[name])
