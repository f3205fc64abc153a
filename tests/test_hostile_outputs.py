"""Fault injection, output side (SECURITY.md): ids and names that become paths, symlinks inside
the output, occupied output folders, unknown ids. Nothing is written outside --out, nothing in
the data folder changes, and every refusal comes before a model is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from hostile_fixtures import StubPipe, Workspace
from typer.testing import CliRunner

from icg.batch.plan import cover_path
from icg.cli import build_app
from icg.data import load_dataset
from icg.generation import generate_covers
from icg.safety import (
    MARKER,
    OutputExistsError,
    UnsafePathError,
    clean_leftovers,
    file_stems,
    prepare_output,
    safe_name,
)

HOSTILE_ITEMS = ["../../escape", "a/b", "CON", ".hidden", "é" * 3, "x" * 150, "q_r", "Q_R"]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path)
    item = ws.items()[0]
    ws.rewrite("items", ws.items() + [{**item, "item_id": i} for i in HOSTILE_ITEMS])
    users = ws.users()
    ws.rewrite("users", users + [{**users[0], "user_id": u} for u in ("p_q", "p", "../u")])
    return ws


def test_hostile_ids_become_distinct_safe_names_under_out(ws: Workspace):
    data = load_dataset(ws.data, require=("items", "users"))
    assert set(HOSTILE_ITEMS) <= set(data.items["item_id"])  # valid ids: mapped, not rejected
    pairs = pd.DataFrame(
        [(u, i) for u in ("p_q", "p", "../u") for i in HOSTILE_ITEMS] + [("p_q", "i0")],
        columns=["user_id", "item_id"],
    )
    manifest = generate_covers(StubPipe(), data, pairs, ws.out, num_inference_steps=1)
    paths = [Path(p) for p in manifest["path"]]
    assert len(set(paths)) == len(paths) == len(pairs)  # ("p_q", "r") vs ("p", "q_r") and case
    for path in paths:
        assert path.parent == ws.out / "icg" and path.is_file()
        assert Path(os.path.realpath(path)).is_relative_to(ws.out.resolve())
    assert manifest[["user_id", "item_id"]].equals(pairs)  # the manifest keeps the mapping
    assert ws.unchanged()


def test_safe_names_and_stems():
    assert safe_name("i0") == "i0" and safe_name("a.b-c_d") == "a.b-c_d"
    for bad in ("..", "../x", "a/b", "a\\b", ".x", "CON", "nul.txt", "x" * 101, "", "é"):
        name = safe_name(bad)
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert name != bad and len(name) <= 100
    stems = file_stems([("a_b", "c"), ("a", "b_c"), ("X", "y"), ("x", "y"), ("u", "i", "")])
    assert len(set(stems.values())) == 5 and stems[("u", "i", "")] == "u_i"


def test_ids_differing_only_in_case_get_distinct_names_on_a_case_insensitive_disk():
    """``A1`` and ``a1`` (and an id crafted to look like ``A1``'s hashed name) never share a
    file name once case is folded: in `safe_name`, `file_stems` and batch cover paths."""
    crafted = safe_name("A1").lower()  # "a1-<hash of A1>": plain, but shaped like a hashed name
    ids = ["a1", "A1", crafted, "B00XYZ", "b00xyz", "i0", "I0"]
    names = [safe_name(i) for i in ids]
    assert len({n.lower() for n in names}) == len(ids), names
    assert safe_name("a1") == "a1" and safe_name("A1").startswith("A1-")  # readable slugs
    assert safe_name(crafted) != crafted
    stems = file_stems([("u", i) for i in ids])
    assert len({s.lower() for s in stems.values()}) == len(ids), stems
    covers = [cover_path(0, i, 0) for i in ids]
    assert len({c.lower() for c in covers}) == len(ids), covers


def test_method_names_and_symlinked_output_folders_are_refused(ws: Workspace):
    data = load_dataset(ws.data, require=("items", "users"))
    pairs = pd.DataFrame({"user_id": ["u0"], "item_id": ["i0"]})
    for method in ("../evil", "a/b", ".", ""):
        with pytest.raises(ValueError, match="method"):
            generate_covers(StubPipe(), data, pairs, ws.out, method=method)
    ws.out.mkdir()
    os.symlink(ws.outside, ws.out / "icg")  # a planted link: the write would land outside
    with pytest.raises(UnsafePathError, match="symlink"):
        generate_covers(StubPipe(), data, pairs, ws.out)
    assert ws.unchanged()


def test_prepare_output_refuses_occupied_folders_and_cleans_leftovers(ws: Workspace):
    with pytest.raises(UnsafePathError, match="inside the input folder"):
        prepare_output(ws.data / "gen", kind="generate", inputs=[ws.data])
    ws.out.mkdir()
    (ws.out / "manifest.parquet").write_text("old")
    (ws.out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        prepare_output(ws.out, kind="generate")
    prepare_output(ws.out, kind="generate", overwrite=True, replace=["manifest.parquet"])
    assert sorted(p.name for p in ws.out.iterdir()) == [MARKER, "notes.txt"]  # not ours: kept
    (ws.out / ".tmp-manifest.parquet-x1").write_text("torn")
    (ws.out / "icg").mkdir()
    prepare_output(ws.out, kind="generate", overwrite=True)  # ours now: emptied
    assert [p.name for p in ws.out.iterdir()] == [MARKER]
    # an interrupted replace moved a complete artifact aside: it comes back, the temp goes
    (ws.out / ".tmp-old-adapter-abc" / "adapter").mkdir(parents=True)
    (ws.out / ".tmp-adapter-def").mkdir()
    clean_leftovers(ws.out)
    assert sorted(p.name for p in ws.out.iterdir()) == [MARKER, "adapter"]
    assert ws.unchanged()


def invoke(*args: str):
    return CliRunner().invoke(build_app(), [str(a) for a in args])


def test_generate_cli_refuses_before_loading_models(ws: Workspace, tmp_path: Path):
    no_model = tmp_path / "no-such-adapter"  # loading it would fail differently
    base = ["generate", "--adapter", no_model, "--data", ws.data, "--out", ws.out]
    pd.DataFrame({"user_id": ["u0", "ghost"], "item_id": ["i0", "i0"]}).to_parquet(
        tmp_path / "pairs.parquet"
    )
    os.mkfifo(tmp_path / "fifo.parquet")
    ws.snapshot()
    result = invoke(*base, "--pairs", tmp_path / "pairs.parquet")
    assert result.exit_code == 2 and "unknown user_id(s) ('ghost')" in result.output
    assert invoke(*base, "--method", "../x").exit_code == 2
    result = invoke(*base, "--pairs", tmp_path / "fifo.parquet")
    assert result.exit_code == 2 and "is a FIFO" in result.output
    assert not ws.out.exists()  # the refusals above wrote nothing
    ws.out.mkdir()
    (ws.out / "old.png").write_text("x")
    result = invoke(*base)
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = invoke(*base[:-2], "--out", ws.data / "covers")
    assert result.exit_code == 2 and "inside the input folder" in result.output
    assert "Traceback" not in result.output and ws.unchanged()


def test_evaluate_refuses_a_non_empty_out_before_loading(ws: Workspace, tmp_path: Path):
    from icg.evaluation.run import evaluate_run

    ws.out.mkdir()
    (ws.out / "metrics.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="metrics.json"):
        evaluate_run(ws.data, tmp_path / "no-run", ws.out)
    assert (ws.out / "metrics.json").read_text() == "{}" and ws.unchanged()


def test_concurrent_manifest_merges_into_one_folder_keep_every_row(tmp_path, monkeypatch):
    """Two writers (as two ``generate --overwrite`` runs into one folder) each read the manifest,
    then write it merged: each read is held open long enough for the other to read too, so
    without the lock one writer's rows would be lost."""
    import threading
    import time

    from icg import generation
    from icg.layout import MANIFEST_FILE, MANIFEST_LOCK_FILE

    path = tmp_path / MANIFEST_FILE

    def rows(user: str) -> pd.DataFrame:
        frame = pd.DataFrame([{c: None for c in generation.MANIFEST_COLUMNS}])
        return frame.assign(user_id=user, item_id="i0", method="icg", path=f"icg/{user}.png")

    generation.write_manifest(rows("u0"), path)
    read = pd.read_parquet

    def slow_read(*args, **kwargs):
        frame = read(*args, **kwargs)
        time.sleep(0.3)  # the other writer reads now, unless the lock holds it back
        return frame

    monkeypatch.setattr(generation.pd, "read_parquet", slow_read)
    errors: list[BaseException] = []

    def write(user: str) -> None:
        try:
            generation.write_manifest(rows(user), path)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(u,)) for u in ("u1", "u2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(read(path)["user_id"]) == ["u0", "u1", "u2"]
    assert (tmp_path / MANIFEST_LOCK_FILE).is_file()  # left in place (see icg.io.file_lock)
    only_lock = tmp_path / "only-lock"
    only_lock.mkdir()
    (only_lock / MANIFEST_LOCK_FILE).touch()
    prepare_output(only_lock, kind="generate")  # a lock alone is not contents to refuse
