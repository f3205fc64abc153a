"""Where rejected rows go: only a dedicated folder, never one that could alias an input.

Rejects are written only when a folder is named (``rejects_dir=`` / ``--rejects-dir``); the data
folder is never written otherwise. A rejects folder is dedicated: it is not the data folder, no
input file lies inside it, it is not a symlink, and it holds nothing but rejects tables (a marker
file, `MARKER`, records that icg made it). Each table is written atomically through
`icg.safety.output_path`, so a symlink planted inside is refused, never followed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from icg.data.errors import DataError
from icg.data.schemas import REJECTS_SCHEMA, SPECS
from icg.data.writers import write_parquet
from icg.io import TMP_PREFIX
from icg.safety import UnsafePathError, clean_leftovers, output_path

logger = logging.getLogger(__name__)

MARKER = ".icg-rejects"


def _is_rejects_table(path: Path) -> bool:
    try:
        return pq.read_schema(path).names == REJECTS_SCHEMA.names
    except Exception:  # noqa: BLE001 - anything unreadable is not ours to replace
        return False


def prepare_rejects_dir(rejects_dir: str | Path, root: Path, inputs: Iterable[Path]) -> Path:
    """Check that ``rejects_dir`` is a dedicated rejects folder for the data folder ``root``
    (with input files ``inputs``), create it and mark it.

    Raises:
        DataError: naming the folder and why it cannot hold rejects.
    """
    folder = Path(rejects_dir).absolute()
    real = Path(os.path.realpath(folder))

    def refuse(why: str) -> DataError:
        return DataError(f"--rejects-dir {folder}: {why}; rejects go only to a dedicated folder")

    if folder.is_symlink():
        raise refuse("is a symlink")
    if real == root:
        raise refuse("is the data folder itself")
    for file in inputs:
        if Path(os.path.realpath(file)).is_relative_to(real):
            raise refuse(f"holds the input {file.name}")
    if folder.exists():
        if not folder.is_dir():
            raise refuse("exists and is not a folder")
        clean_leftovers(folder, depth=1)
        marked = (folder / MARKER).is_file()
        tables = {f"{name}.parquet" for name in SPECS}
        for entry in folder.iterdir():
            if entry.name == MARKER or entry.name.startswith(TMP_PREFIX):
                continue
            if entry.name not in tables or entry.is_symlink() or not entry.is_file():
                raise refuse(f"holds {entry.name}, which is not a rejects table")
            if not marked and not _is_rejects_table(entry):
                raise refuse(f"holds {entry.name}, which is not a rejects table")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("icg rejects folder: rejected rows by table\n", encoding="utf-8")
    return folder


def write_rejects(rejects: pd.DataFrame, folder: Path, table: str, rows: int) -> Path | None:
    """Write one table's rejects to ``folder/<table>.parquet`` (an empty table when there are
    none, replacing stale ones); an OS error is logged, the rows stay in memory."""
    try:
        path = output_path(folder, f"{table}.parquet")
        return write_parquet(rejects, path, schema=REJECTS_SCHEMA)
    except (OSError, UnsafePathError) as err:
        logger.warning(
            "could not write rejects to %s (%s); %d rejected rows are kept in memory",
            folder,
            err,
            rows,
        )
        return None


def save_rejects(data, rejects_dir: str | Path) -> dict[str, Path | None]:
    """Write the rejects a `load_dataset` call kept in memory (``data.rejects``) to a dedicated
    folder, once the caller knows it will go on (e.g. after its output folder was prepared)."""
    inputs = [t.file for t in data.report.tables.values()]
    folder = prepare_rejects_dir(rejects_dir, data.root, inputs)
    written = {}
    for name, rejects in data.rejects.items():
        table = data.report.tables[name]
        written[name] = table.rejects_file = write_rejects(
            rejects, folder, name, table.rows_rejected
        )
    return written
