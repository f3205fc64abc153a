"""The batch manifest: a partitioned parquet dataset, one part file per finished partition.

    OUT/manifest/partition=00012/part.parquet    # one row per (segment, item) of partition 12

A part is written atomically after every cover of its partition is on disk, so a part that
exists is a finished partition: resume skips it, and a killed run leaves no torn part.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from icg.data import write_parquet
from icg.layout import BATCH_MANIFEST_DIR, BATCH_PART_FILE
from icg.safety import output_path

MANIFEST_DIR = BATCH_MANIFEST_DIR
MANIFEST_SCHEMA = pa.schema(
    [
        ("unit", pa.int64()),
        ("segment", pa.int64()),
        ("segment_key", pa.string()),
        ("item_id", pa.string()),
        ("path", pa.string()),  # the segment's cover, relative to OUT
        ("candidate", pa.int64()),
        ("seed", pa.int64()),
        ("score", pa.float64()),  # the kept candidate's score (NaN: one draw, nothing scored)
        ("scores", pa.list_(pa.float64())),  # every candidate's score, in candidate order
    ]
)


def part_path(out: Path, partition: int) -> Path:
    return output_path(out, MANIFEST_DIR, f"partition={partition:05d}", BATCH_PART_FILE)


def finished_partitions(out: Path) -> set[int]:
    """Partitions whose part file exists (temporary ``.tmp-*`` files do not count)."""
    root = Path(out) / MANIFEST_DIR
    if not root.is_dir():
        return set()
    return {
        int(p.parent.name.split("=", 1)[1])
        for p in root.glob("partition=*/part.parquet")
        if p.is_file()
    }


def write_part(out: Path, partition: int, rows: pd.DataFrame) -> Path:
    """Write one partition's rows atomically (columns of `MANIFEST_SCHEMA`)."""
    table = pa.Table.from_pandas(rows[MANIFEST_SCHEMA.names], MANIFEST_SCHEMA, preserve_index=False)
    return write_parquet(table, part_path(out, partition))


def read_manifest(out: Path) -> pd.DataFrame:
    """Every finished partition's rows, with a ``partition`` column, in unit order."""
    root = Path(out) / MANIFEST_DIR
    files = sorted(root.glob(f"partition=*/{BATCH_PART_FILE}"))
    if not files:
        return pd.DataFrame(columns=["partition", *MANIFEST_SCHEMA.names])
    key = ds.partitioning(pa.schema([("partition", pa.int64())]), flavor="hive")
    dataset = ds.dataset(
        [str(f) for f in files], format="parquet", partitioning=key, partition_base_dir=str(root)
    )
    frame = dataset.to_table().to_pandas()
    frame["partition"] = frame["partition"].astype("int64")
    return frame.sort_values("unit", kind="stable").reset_index(drop=True)
