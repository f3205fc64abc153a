"""Readers (parquet, CSV, JSONL) and atomic parquet writers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from icg.data import IMPRESSIONS_SCHEMA, ITEMS_SCHEMA, load_dataset, write_parquet, write_table
from icg.data.testing import tiny_frames, write_tiny_dataset


def comparable(data) -> dict[str, pd.DataFrame]:
    users = data.users.assign(embedding=[e.tolist() for e in data.users["embedding"]])
    return {"items": data.items, "users": users, "impressions": data.impressions}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_round_trip_matches_parquet(tmp_path, fmt):
    reference = comparable(load_dataset(write_tiny_dataset(tmp_path / "pq")))
    other = load_dataset(write_tiny_dataset(tmp_path / fmt, fmt=fmt))
    assert all(t.file.suffix == f".{fmt}" for t in other.report.tables.values())
    for name, frame in comparable(other).items():
        expected = reference[name].copy()
        for col in ("image", "cover"):
            if col in frame:
                frame[col] = frame[col].str.replace(str(tmp_path / fmt), "")
                expected[col] = expected[col].str.replace(str(tmp_path / "pq"), "")
        pd.testing.assert_frame_equal(frame, expected, check_exact=False, rtol=1e-6)


def test_write_back_and_reload(tmp_path):
    """What we load from CSV can be written as parquet with our schemas and reloads the same."""
    root = write_tiny_dataset(tmp_path / "d", fmt="csv")
    data = load_dataset(root)

    def relative(paths: pd.Series) -> list[str]:
        return [Path(p).relative_to(data.root).as_posix() for p in paths]

    write_table("items", data.items.assign(image=relative(data.items["image"])), root)
    write_table("users", data.users, root)
    write_table(
        "impressions", data.impressions.assign(cover=relative(data.impressions["cover"])), root
    )
    assert pq.read_schema(root / "users.parquet").field("embedding").type == pa.list_(pa.float32())
    assert pq.read_schema(root / "impressions.parquet").equals(IMPRESSIONS_SCHEMA)
    again = load_dataset(root)
    assert all(t.file.suffix == ".parquet" for t in again.report.tables.values())
    for name, frame in comparable(again).items():
        pd.testing.assert_frame_equal(frame, comparable(data)[name])


def test_parquet_preferred(tmp_path):
    root = write_tiny_dataset(tmp_path / "d")
    (root / "items.csv").write_text("garbage,without,the,columns\n1,2,3,4\n")
    assert load_dataset(root).report.tables["items"].file.name == "items.parquet"


@pytest.mark.parametrize("tz", [None, "Europe/Paris"])
def test_timestamp_type_normalised(tmp_path, tz):
    frames = tiny_frames()
    stamps = pd.to_datetime(frames["impressions"]["timestamp"], unit="s")
    if tz is not None:
        stamps = stamps.dt.tz_localize("UTC").dt.tz_convert(tz)
    frames["impressions"]["timestamp"] = stamps
    root = tmp_path / "d"
    write_tiny_dataset(root)
    write_parquet(frames["impressions"], root / "impressions.parquet")
    assert "timestamp" in str(pq.read_schema(root / "impressions.parquet").field("timestamp").type)
    data = load_dataset(root)
    assert data.impressions["timestamp"].dtype == np.int64
    assert (
        data.impressions["timestamp"].tolist() == tiny_frames()["impressions"]["timestamp"].tolist()
    )


def test_integer_ids_become_strings(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", fmt="jsonl")
    (root / "users.jsonl").write_text(
        '{"user_id": 12345678901234567890, "embedding": [1, 2]}\n'
        '{"user_id": 7, "embedding": [3, 4]}\n'
    )
    (root / "impressions.jsonl").unlink()
    data = load_dataset(root, require=("items", "users"))
    assert data.users["user_id"].tolist() == ["12345678901234567890", "7"]


def test_atomic_write_leaves_no_temp(tmp_path, monkeypatch):
    frame = tiny_frames()["items"]
    path = write_table("items", frame, tmp_path)
    assert pq.read_schema(path).equals(
        ITEMS_SCHEMA.remove(ITEMS_SCHEMA.get_field_index("description"))
    )
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_table("items", frame.assign(title="changed"), tmp_path)
    assert path.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["items.parquet"]


def test_write_table_rejects_unknown(tmp_path):
    with pytest.raises(ValueError, match="unknown table 'clicks'"):
        write_table("clicks", pd.DataFrame(), tmp_path)
    with pytest.raises(ValueError, match="'title' is required"):
        write_table("items", tiny_frames()["items"].drop(columns="title"), tmp_path)


def test_datetime_objects_in_jsonl_strings(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", fmt="jsonl")
    lines = (root / "impressions.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace("1700000000", '"2023-11-14 22:13:20"')
    (root / "impressions.jsonl").write_text("\n".join(lines))
    data = load_dataset(root)
    stamp = dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC).timestamp()
    assert data.impressions["timestamp"].iloc[0] == int(stamp) == 1700000000
