"""Fault injection, input side (SECURITY.md): hostile paths, special files, characters, caps,
torn tables and rejects folders. Every case ends in a per-row reject or one clear error, and the
tree hash shows that no input (and nothing outside the output) changed."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hostile_fixtures import Workspace
from PIL import Image
from typer.testing import CliRunner

from icg.cli import build_app
from icg.data import DataError, load_dataset
from icg.data.readers import read_raw
from icg.data.safety import Caps
from icg.io import describe_error


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


# ---- input files: paths, symlinks, special files ----------------------------------------------
def test_symlink_leaving_the_data_folder_is_rejected_like_dotdot(ws: Workspace):
    os.symlink(ws.outside / "secret.png", ws.data / "images" / "link.png")
    os.symlink(ws.outside, ws.data / "images" / "linkdir")
    os.symlink(ws.data / "images" / "i0.png", ws.data / "images" / "inside.png")  # stays: fine
    items = ws.items()
    items += [
        {**items[0], "item_id": "a", "image": "images/link.png"},
        {**items[0], "item_id": "b", "image": "images/linkdir/secret.png"},
        {**items[0], "item_id": "c", "image": "images/inside.png"},
    ]
    ws.rewrite("items", items)
    data = load_dataset(ws.data)
    assert data.items["item_id"].tolist() == ["i0", "i1", "i2", "c"]
    rejected = data.rejects["items"]
    assert set(rejected["reason"]) == {"bad_path"}
    problems = " ".join(data.report.tables["items"].problems)
    assert problems.count("symlink leads out of the data folder") == 2
    assert ws.unchanged()


def test_fifo_device_and_folder_are_rejected_without_being_opened(ws: Workspace):
    os.mkfifo(ws.data / "images" / "pipe.png")  # opening it for reading would block forever
    (ws.data / "images" / "folder.png").mkdir()
    os.symlink("/dev/zero", ws.data / "images" / "dev.png")
    items = ws.items()
    items += [
        {**items[0], "item_id": "p", "image": "images/pipe.png"},
        {**items[0], "item_id": "f", "image": "images/folder.png"},
        {**items[0], "item_id": "d", "image": "images/dev.png"},
    ]
    ws.rewrite("items", items)
    data = load_dataset(ws.data)
    assert data.items["item_id"].tolist() == ["i0", "i1", "i2"]
    by_row = dict(zip(data.rejects["items"]["row"], data.rejects["items"]["reason"], strict=True))
    assert by_row == {3: "not_a_file", 4: "not_a_file", 5: "bad_path"}
    assert ws.unchanged()


def test_fifo_in_place_of_a_table_is_one_clear_error(ws: Workspace):
    (ws.data / "users.jsonl").unlink()
    os.mkfifo(ws.data / "users.jsonl")
    ws.snapshot()
    with pytest.raises(DataError, match="users.jsonl: table file is a FIFO"):
        load_dataset(ws.data)
    os.unlink(ws.data / "users.jsonl")
    os.symlink(ws.outside / "secret.txt", ws.data / "users.jsonl")
    with pytest.raises(DataError, match="links out of the data folder"):
        load_dataset(ws.data)


def test_nul_and_control_characters_are_rejected_per_row(ws: Workspace):
    items = ws.items()
    items += [
        {**items[0], "item_id": "n1", "image": "images/i0.png\x00.txt"},  # crashed every table
        {**items[0], "item_id": "n2", "title": "evil\x1b[31mred"},
        {**items[0], "item_id": "n3\n", "title": "newline in an id"},
        {**items[0], "item_id": "n4", "description": "tabs\tand\nnewlines are fine here"},
    ]
    ws.rewrite("items", items)
    data = load_dataset(ws.data)
    assert data.items["item_id"].tolist() == ["i0", "i1", "i2", "n4"]
    rejected = data.rejects["items"]
    assert rejected["row"].tolist() == [3, 4, 5]
    assert set(rejected["reason"]) == {"control_character"}
    assert ws.unchanged()


# ---- caps ----------------------------------------------------------------------------------------
def test_caps_reject_long_text_and_extreme_embeddings_per_row(ws: Workspace):
    items = ws.items()
    items += [
        {**items[0], "item_id": "long", "title": "x" * 5_000_000},  # exhausted the MLLM before
        {**items[0], "item_id": "desc", "description": "y" * 20_000},
        {**items[0], "item_id": "extra", "notes": "z" * 70_000},
        {**items[0], "item_id": "i" * 300},
    ]
    ws.rewrite("items", items)
    users = ws.users()
    users += [
        {"user_id": "huge", "embedding": [1e38, 0.0, 0.0, 0.0]},  # finite in float32
        {"user_id": "big", "embedding": [5e3, 5e3, 5e3, 5e3]},  # under 1e4, norm 1e4 x median
        {"user_id": "ok", "embedding": [0.5, -1.0, 2.0, 0.1]},
    ]
    ws.rewrite("users", users)
    data = load_dataset(ws.data, require=("items", "users"))
    assert data.items["item_id"].tolist() == ["i0", "i1", "i2"]
    assert set(data.rejects["items"]["reason"]) == {"too_long"}
    assert data.users["user_id"].tolist() == ["u0", "u1", "u2", "ok"]
    assert set(data.rejects["users"]["reason"]) == {"embedding_magnitude"}
    assert np.abs(data.user_embeddings()).max() < 10
    with pytest.raises(DataError, match=r"too_long \(6 characters, the limit is 5\)"):
        load_dataset(ws.data, require=("items", "users"), caps=Caps(max_title_chars=5))
    assert ws.unchanged()


# ---- torn tables: readers recover line by line ---------------------------------------------
def test_csv_long_field_and_bad_byte_reject_one_row_each(tmp_path: Path):
    ws = Workspace(tmp_path, fmt="csv")
    text = (ws.data / "items.csv").read_bytes()
    text += b'big,"' + b"x" * 200_000 + b'",books,images/i0.png\n'  # over the csv field limit
    text += b"latin,caf\xe9,books,images/i0.png\n"  # one non-UTF-8 byte
    text += b"i9,Fine,books,images/i1.png\n"
    (ws.data / "items.csv").write_bytes(text)
    ws.snapshot()
    data = load_dataset(ws.data)
    assert data.items["item_id"].tolist() == ["i0", "i1", "i2", "i9"]
    details = data.rejects["items"]
    assert set(details["reason"]) == {"malformed_row"} and len(details) == 2
    assert ws.unchanged()


def test_jsonl_bad_byte_deep_nesting_and_u2028(ws: Workspace):
    lines = (ws.data / "items.jsonl").read_bytes().splitlines()
    good = json.loads(lines[0])
    lines.append(
        json.dumps({**good, "item_id": "bad", "title": "X"}).encode().replace(b"X", b"\xff")
    )
    lines.append(b'{"item_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    # a raw U+2028 inside a string is valid JSON; str.splitlines() used to cut the row in two
    lines.append(
        json.dumps({**good, "item_id": "sep", "title": "a\u2028b"}, ensure_ascii=False).encode()
    )
    (ws.data / "items.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    ws.snapshot()
    data = load_dataset(ws.data)
    assert data.items["item_id"].tolist() == ["i0", "i1", "i2", "sep"]
    assert data.rejects["items"]["row"].tolist() == [3, 4]
    assert ws.unchanged()


def test_duplicate_column_names_are_one_clear_error(tmp_path: Path):
    ws = Workspace(tmp_path, fmt="csv")
    text = (ws.data / "users.csv").read_text().splitlines()
    text[0] = "user_id,user_id"
    (ws.data / "users.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"duplicate column\(s\) \['user_id'\]"):
        load_dataset(ws.data)


# ---- one validation --------------------------------------------------------------------------
def truncated_jpeg(path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)).save(
        buf, format="JPEG"
    )
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])  # header fine, pixels cut


def test_training_validation_is_data_validate_and_decodes_images(ws: Workspace, monkeypatch):
    truncated_jpeg(ws.data / "covers" / "cut.jpg")
    rows = ws.frames["impressions"].to_dict(orient="records")
    rows = [{**r, "clicked": bool(r["clicked"]), "timestamp": int(r["timestamp"])} for r in rows]
    rows.append({**rows[0], "event_id": "cut", "cover": "covers/cut.jpg", "clicked": True})
    ws.rewrite("impressions", rows)
    seen = []
    import icg.data

    real = icg.data.load_dataset
    spy = lambda *a, **k: seen.append(k) or real(*a, **k)  # noqa: E731
    monkeypatch.setattr(icg.data, "load_dataset", spy)
    from icg.training import click_log
    from icg.training.click_log import load_preference_data

    monkeypatch.setattr(click_log, "load_dataset", spy)  # bound at import, whatever the order
    from icg.training.preference import PreferenceConfig

    with pytest.raises(Exception):  # noqa: B017 - stops at the CLIP, after validation
        load_preference_data(ws.data, PreferenceConfig(clip="/nonexistent-clip"))
    assert seen and all(k.get("check_images", True) for k in seen)  # what validate does
    data = real(ws.data)
    assert "cut" not in set(data.impressions["event_id"])
    assert data.rejects["impressions"]["reason"].tolist() == ["corrupt_image"]
    result = CliRunner().invoke(build_app(), ["data", "validate", str(ws.data)])
    assert result.exit_code == 0 and "corrupt or truncated JPEG image" in result.output
    assert ws.unchanged()


# ---- rejects go only to a dedicated folder -------------------------------------------------
def test_rejects_never_alias_inputs_or_follow_symlinks(ws: Workspace):
    items = ws.items() + [{**ws.items()[0], "item_id": "i0"}]  # one duplicate row to reject
    ws.rewrite("items", items)
    with pytest.raises(DataError, match="is the data folder itself"):
        load_dataset(ws.data, rejects_dir=ws.data)  # replaced the tables with rejects before
    os.symlink(ws.outside, ws.data / "rejects")
    ws.snapshot()
    with pytest.raises(DataError, match="is a symlink"):
        load_dataset(ws.data, rejects_dir=ws.data / "rejects")
    with pytest.raises(DataError, match="holds secret.png, which is not a rejects table"):
        load_dataset(ws.data, rejects_dir=ws.outside)
    with pytest.raises(DataError, match="holds the input"):
        load_dataset(ws.data, rejects_dir=ws.tmp)
    assert ws.unchanged()
    os.unlink(ws.data / "rejects")
    ws.snapshot()
    data = load_dataset(ws.data)  # no rejects_dir: the data folder is not written
    assert len(data.rejects["items"]) == 1 and ws.unchanged()
    (ws.out / "rejects").mkdir(parents=True)
    os.symlink(ws.outside / "secret.txt", ws.out / "rejects" / "items.parquet")
    with pytest.raises(DataError, match="holds items.parquet"):
        load_dataset(ws.data, rejects_dir=ws.out / "rejects")
    os.unlink(ws.out / "rejects" / "items.parquet")
    data = load_dataset(ws.data, rejects_dir=ws.out / "rejects")
    assert pd.read_parquet(ws.out / "rejects" / "items.parquet")["row"].tolist() == [3]
    assert ws.unchanged()


def test_validate_cli_prints_clear_errors_without_markup_injection(ws: Workspace):
    items = ws.items()
    ws.rewrite(
        "items", [{k: v for k, v in r.items() if k != "title"} | {"[red]x": 1} for r in items]
    )
    result = CliRunner().invoke(build_app(), ["data", "validate", str(ws.data)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "missing required column(s) ['title']" in result.output
    assert "[red]x" in result.output  # printed as text, not interpreted as rich markup
    assert ws.unchanged()


@pytest.mark.parametrize(
    "message",
    [
        "cannot identify image file <_io.BufferedReader name=16>",
        "Could not open Parquet input source '<Buffer>': magic bytes not found",
        "bad value <icg.Thing object at 0x7f00deadbeef> here",
    ],
)
def test_library_messages_lose_their_object_reprs(message):
    text = describe_error(ValueError(message))
    assert "<" not in text and ">" not in text and "0x7f" not in text and "the file" in text


def test_a_corrupt_table_names_the_file_not_a_buffer(tmp_path):
    path = tmp_path / "items.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError) as info:
        read_raw(path)
    message = str(info.value)
    assert message.startswith(f"{path}: unreadable parquet table") and "<" not in message
