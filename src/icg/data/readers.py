"""Read a raw table from parquet, CSV or JSONL into a pandas DataFrame, lazily about bad rows.

The returned frame's index is the 0-based row number in the source file (header and blank lines
not counted), so every later rejection can name its row. Values are not parsed here: CSV gives
strings, JSONL gives JSON values (kept as Python objects, so big integer ids stay exact), parquet
gives its own types. Rows that cannot even be split into fields come back as rejects.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from icg.data.errors import DataError
from icg.data.safety import TRUTH_DIR, file_kind, has_undecodable, open_regular
from icg.io import describe_error

logger = logging.getLogger(__name__)

SUFFIXES: dict[str, str] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
"""Accepted suffixes, in order of preference when a folder holds several for one table."""


@dataclass
class RawTable:
    """A table as read, before validation.

    Args:
        path: the source file.
        frame: the rows that could be split into fields; index = source row number.
        rows_read: every data row in the file, including malformed ones.
        malformed: (row, value, detail) for rows that could not be split into fields.
    """

    path: Path
    frame: pd.DataFrame
    rows_read: int
    malformed: list[tuple[int, str, str]] = field(default_factory=list)


def find_table_file(folder: Path, name: str) -> Path | None:
    """Find ``<name>.<suffix>`` directly inside ``folder`` (never in subfolders).

    Parquet is preferred over CSV, CSV over JSONL; other candidates are ignored with a log line.

    Args:
        folder: the data folder.
        name: the table name (file stem), e.g. "items".
    """
    found = [folder / f"{name}{suffix}" for suffix in SUFFIXES]
    found = [p for p in found if p.exists() or p.is_symlink()]
    for p in found:  # refused before anything opens it: a FIFO would block a reader forever
        real = Path(os.path.realpath(p))
        if not real.is_relative_to(folder.resolve()) or real.is_relative_to(
            folder.resolve() / TRUTH_DIR
        ):
            raise DataError(f"{p}: table file links out of the data folder", file=p)
        if not p.is_file():
            kind = file_kind(os.stat(p).st_mode) if p.exists() else "dangling symlink"
            raise DataError(f"{p}: table file is a {kind}, expected a regular file", file=p)
    if not found:
        return None
    if len(found) > 1:
        logger.info("%s: using %s, ignoring %s", name, found[0].name, [p.name for p in found[1:]])
    return found[0]


def read_raw(path: Path) -> RawTable:
    """Read one table file by its suffix.

    Args:
        path: a .parquet/.pq, .csv or .jsonl/.ndjson file.

    Raises:
        DataError: unknown suffix, or the file cannot be read at all.
    """
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: unsupported table format {path.suffix!r}, expected one of {list(SUFFIXES)}",
            file=path,
        )
    try:
        with open_regular(path) as fp:
            data = fp.read()
    except OSError as err:
        raise DataError(
            f"{path}: cannot read table file: {describe_error(err)}", file=path
        ) from err
    try:
        if fmt == "parquet":
            table = _read_parquet(path, data)
        elif fmt == "csv":  # undecodable bytes are kept as surrogates and rejected per row
            table = _read_csv(path, data.decode("utf-8-sig", errors="surrogateescape"))
        else:
            table = _read_jsonl(path, data)
    except DataError:
        raise
    except (pa.ArrowException, csv.Error, OSError, ValueError) as err:
        raise DataError(
            f"{path}: unreadable {fmt} table: {describe_error(err)}", file=path
        ) from err
    duplicated = sorted({c for c in table.frame.columns if list(table.frame.columns).count(c) > 1})
    if duplicated:
        raise DataError(f"{path}: duplicate column(s) {duplicated}", file=path, field=duplicated[0])
    return table


def _read_parquet(path: Path, data: bytes) -> RawTable:
    table = pq.read_table(pa.BufferReader(data))
    # integer_object_nulls keeps big integer ids exact when a column has nulls.
    frame = table.to_pandas(integer_object_nulls=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    return RawTable(path, frame.reset_index(drop=True), len(frame))


def _read_csv(path: Path, text: str) -> RawTable:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise DataError(
            f"{path}: unreadable CSV header row: {describe_error(err)}", file=path
        ) from err
    if header is None:
        raise DataError(f"{path}: empty CSV file, expected a header row", file=path)
    header = [h.strip() for h in header]
    if has_undecodable(header):
        raise DataError(f"{path}: the CSV header row is not valid UTF-8", file=path)
    rows: list[list[str | None]] = []
    index: list[int] = []
    malformed: list[tuple[int, str, str]] = []
    n = 0
    while True:  # a record the csv module cannot parse is one malformed row, not the table
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            malformed.append(
                (n, f"<line {reader.line_num}>", f"unparsable CSV record: {describe_error(err)}")
            )
            n += 1
            continue
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank line
        if len(record) != len(header):
            malformed.append((n, ",".join(record), f"{len(record)} fields, expected {len(header)}"))
        elif has_undecodable(record):
            malformed.append((n, ",".join(record), "not valid UTF-8 text"))
        else:
            rows.append([v if v != "" else None for v in record])
            index.append(n)
        n += 1
    frame = pd.DataFrame(rows, columns=header, index=pd.Index(index, dtype="int64"), dtype=object)
    return RawTable(path, frame, n, malformed)


def _read_jsonl(path: Path, data: bytes) -> RawTable:
    records: list[dict] = []
    index: list[int] = []
    malformed: list[tuple[int, str, str]] = []
    n = 0
    # split on b"\n" only: str.splitlines() would also split inside strings at U+2028, \x1c, ...
    for k, raw in enumerate(data.split(b"\n")):
        raw = raw.removeprefix(b"\xef\xbb\xbf") if k == 0 else raw
        line = raw.decode("utf-8", errors="surrogateescape").rstrip("\r")
        if not line.strip():
            continue
        try:
            if has_undecodable([line]):
                raise ValueError("not valid UTF-8 text")
            record = json.loads(line)
        except json.JSONDecodeError as err:
            malformed.append((n, line, f"invalid JSON: {err.msg}"))
        except (ValueError, RecursionError) as err:
            malformed.append(
                (n, line, str(err) if isinstance(err, ValueError) else "nested too deep")
            )
        else:
            if isinstance(record, dict):
                records.append(record)
                index.append(n)
            else:
                malformed.append((n, line, f"expected a JSON object, got {type(record).__name__}"))
        n += 1
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))
    frame = pd.DataFrame(
        {str(c).strip(): pd.Series([r.get(c) for r in records], dtype=object) for c in columns},
        index=pd.RangeIndex(len(records)),
    )
    frame.index = pd.Index(index, dtype="int64")
    return RawTable(path, frame, n, malformed)
