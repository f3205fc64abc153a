"""Lazy, complete validation: every bad row is rejected with file, row, field and reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_data_images import bomb_png, truncated

from icg.data import DataError, load_dataset
from icg.data.testing import tiny_frames, write_frames, write_images, write_tiny_dataset


def jsonl(path: Path, rows: list[object]) -> None:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


@pytest.fixture
def messy(tmp_path) -> Path:
    """A JSONL dataset with one bad row per rejection reason (and valid rows around them)."""
    root = tmp_path / "data"
    frames = tiny_frames()
    write_frames(root, frames, "jsonl")
    write_images(root, ["images/i0.png", "images/i1.png", "images/i2.png", "covers/c0.png"])
    truncated(root / "images" / "trunc.png")
    bomb_png(root / "images" / "bomb.png")
    Image.new("RGB", (4, 4)).save(root / "images" / "x.tif")
    (root / "truth").mkdir()
    Image.new("RGB", (4, 4)).save(root / "truth" / "secret.png")
    item = {"item_id": "i9", "title": "t", "category": "c", "image": "images/i0.png"}
    items = [json.loads(x) for x in (root / "items.jsonl").read_text().splitlines()]
    items += [
        {**item, "item_id": "n3", "title": None},  # row 3: null
        {**item, "item_id": "i0"},  # row 4: duplicate
        {**item, "item_id": "n5", "image": "images/missing.png"},  # row 5
        {**item, "item_id": "n6", "image": "images/trunc.png"},  # row 6
        {**item, "item_id": "n7", "image": "images/bomb.png"},  # row 7
        {**item, "item_id": "n8", "image": "images/x.tif"},  # row 8
        {**item, "item_id": "n9", "image": "/etc/hostname"},  # row 9
        {**item, "item_id": "n10", "image": "truth/secret.png"},  # row 10
        {**item, "item_id": "n11", "title": 5.5},  # row 11: wrong type
        {**item, "item_id": "n12", "image": "images/../../outside.png"},  # row 12
    ]
    jsonl(root / "items.jsonl", items)
    users = [json.loads(x) for x in (root / "users.jsonl").read_text().splitlines()]
    users += [
        {"user_id": "u3", "embedding": [0.0, 1.0, 2.0]},  # row 3: wrong length
        {"user_id": "u4", "embedding": "[1, inf, 0, 0]"},  # row 4: non-finite
        {"user_id": "u5", "embedding": "abc"},  # row 5: wrong type
        {"user_id": "u0", "embedding": [0.0, 0.0, 0.0, 0.0]},  # row 6: duplicate
    ]
    jsonl(root / "users.jsonl", users)
    imp = {"user_id": "u0", "item_id": "i0", "cover": "covers/c0.png", "position": 0}
    imp |= {"clicked": True, "timestamp": 1}
    impressions = [{**imp, "event_id": f"e{k}"} for k in range(6)]
    impressions += [
        {**imp, "event_id": "x6", "user_id": "u99"},  # row 6: unknown user
        {**imp, "event_id": "x7", "item_id": "i99"},  # row 7: unknown item
        {**imp, "event_id": "x8", "position": -1},  # row 8: negative position
        {**imp, "event_id": "e0"},  # row 9: duplicate event id
        {**imp, "event_id": "x10", "user_id": None},  # row 10: null
        {**imp, "event_id": "x11", "clicked": "maybe"},  # row 11: wrong type
        {**imp, "event_id": "x12", "user_id": "u3"},  # row 12: user rejected in users
        "{not json",  # row 13: malformed
        {**imp, "event_id": "x14", "cover": "covers/missing.png"},  # row 14
        {**imp, "event_id": "x15", "item_id": "n3"},  # row 15: item rejected in items
    ]
    jsonl(root / "impressions.jsonl", impressions)
    return root


def rejects(root: Path, table: str) -> pd.DataFrame:
    return pd.read_parquet(root / "rejects" / f"{table}.parquet")


def reasons_by_row(frame: pd.DataFrame) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for row, reason in zip(frame["row"], frame["reason"], strict=True):
        out.setdefault(int(row), set()).add(reason)
    return out


def test_every_reason_reported_and_valid_rows_survive(messy):
    data = load_dataset(messy, rejects_dir=messy / "rejects")
    assert data.items["item_id"].tolist() == ["i0", "i1", "i2"]
    assert data.users["user_id"].tolist() == ["u0", "u1", "u2"]
    assert data.impressions["event_id"].tolist() == [f"e{k}" for k in range(6)]
    assert data.embedding_dim == 4
    assert all(e.dtype == np.float32 and e.shape == (4,) for e in data.users["embedding"])
    assert Path(data.items["image"][0]) == messy / "images" / "i0.png"
    assert Path(data.items["image"][0]).is_absolute()

    items = rejects(messy, "items")
    assert list(items.columns) == ["file", "row", "field", "value", "reason"]
    assert set(items["file"]) == {str(messy / "items.jsonl")}
    assert reasons_by_row(items) == {
        3: {"null"},
        4: {"duplicate_id"},
        5: {"missing_image"},
        6: {"corrupt_image"},
        7: {"image_too_large"},
        8: {"disallowed_format"},
        9: {"bad_path"},
        10: {"forbidden_path"},
        11: {"wrong_type"},
        12: {"bad_path"},
    }
    assert items.loc[items["row"] == 3, "field"].item() == "title"
    assert reasons_by_row(rejects(messy, "users")) == {
        3: {"embedding_length"},
        4: {"embedding_non_finite"},
        5: {"wrong_type"},
        6: {"duplicate_id"},
    }
    imp = rejects(messy, "impressions")
    assert reasons_by_row(imp) == {
        6: {"unknown_user"},
        7: {"unknown_item"},
        8: {"negative_position"},
        9: {"duplicate_id"},
        10: {"null"},
        11: {"wrong_type"},
        12: {"unknown_user"},
        13: {"malformed_row"},
        14: {"missing_image"},
        15: {"unknown_item"},
    }
    row9 = imp[imp["row"] == 9].iloc[0]
    assert (row9["field"], row9["value"]) == ("event_id", "e0")

    report = data.report
    assert report.usable
    t = report.tables["impressions"]
    assert (t.rows_read, t.rows_kept, t.rows_rejected) == (16, 6, 10)
    assert t.rejected["unknown_user"] == 2
    text = "\n".join(report.problems)
    assert "items.jsonl row 3, field title: null" in text
    assert "impressions.jsonl row 9, field event_id: duplicate_id (first seen at row 0)" in text
    assert "impressions.jsonl row 6, field user_id: unknown_user (not found in users.jsonl)" in text
    assert "row 12, field user_id: unknown_user (rejected in users.jsonl)" in text
    assert "items.jsonl row 7, field image: image_too_large" in text


def test_rejects_dir_and_images_unchecked(messy, tmp_path):
    out = tmp_path / "elsewhere"
    data = load_dataset(messy, rejects_dir=out, check_images=False)
    assert (out / "items.parquet").is_file() and not (messy / "rejects").exists()
    # without image checks the bad images pass; paths are still checked
    assert set(data.items["item_id"]) == {"i0", "i1", "i2", "n5", "n6", "n7", "n8"}
    assert data.report.tables["items"].rejected["bad_path"] == 2


def test_optional_impressions(tmp_path):
    root = write_tiny_dataset(tmp_path / "d")
    (root / "impressions.parquet").unlink()
    with pytest.raises(DataError, match="missing required table 'impressions'"):
        load_dataset(root)
    data = load_dataset(root, require=("items", "users"))
    assert data.impressions is None and len(data.items) == 3


def test_missing_column(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", fmt="csv")
    frame = pd.read_csv(root / "items.csv").drop(columns="title")
    frame.to_csv(root / "items.csv", index=False)
    with pytest.raises(DataError, match=r"items.csv.*missing required column.*'title'") as info:
        load_dataset(root)
    assert info.value.field == "title"


def test_unreadable_table(tmp_path):
    root = write_tiny_dataset(tmp_path / "d")
    (root / "users.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="users.parquet: unreadable parquet"):
        load_dataset(root)


def test_zero_valid_rows(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", fmt="csv")
    frame = pd.read_csv(root / "items.csv")
    frame["category"] = None
    frame.to_csv(root / "items.csv", index=False)
    with pytest.raises(DataError, match="no valid rows.*row 0, field category: null") as info:
        load_dataset(root)
    assert (info.value.row, info.value.field) == (0, "category")


def test_inconsistent_embeddings(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", fmt="jsonl", n_users=2)
    jsonl(
        root / "users.jsonl",
        [{"user_id": "u0", "embedding": [1, 2]}, {"user_id": "u1", "embedding": [1, 2, 3]}],
    )
    with pytest.raises(DataError, match=r"users.jsonl.*'embedding'.*length 2 first at row 0"):
        load_dataset(root)
    data = load_dataset(root, embedding_dim=3, require=("items", "users"))
    assert data.embedding_dim == 3 and data.users["user_id"].tolist() == ["u1"]


def test_csv_parsing(tmp_path):
    root = write_tiny_dataset(tmp_path / "d", fmt="csv")
    (root / "users.csv").write_text(
        'user_id,embedding,age\nu0,0.1 0.2 0.3,31\nu1,"[0.1, 0.2, 0.3]",\nu2,(1;2;3),40\n'
    )
    lines = (root / "impressions.csv").read_text().splitlines()
    lines[1] = "e0,u0,i0,covers/c0.png,3,TRUE,2024-01-01T00:00:01Z"
    lines.append("e9,u0,i0,covers/c0.png,1,0,5,extra-field")  # malformed: 8 fields
    (root / "impressions.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset(root)
    assert data.embedding_dim == 3
    np.testing.assert_allclose(data.users["embedding"][2], [1, 2, 3])
    assert data.users["age"].tolist()[0] == "31"  # extra features pass through
    first = data.impressions.iloc[0]
    assert (first["position"], first["clicked"], first["timestamp"]) == (3, True, 1704067201)
    imp = data.report.tables["impressions"]
    assert imp.rejected == {"malformed_row": 1} and imp.rows_read == 7
