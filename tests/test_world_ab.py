"""`icg world ab`: a simulated online A/B test on CoverWorld whose log is a platform folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from icg.ab import ab_report, load_log
from icg.data import load_dataset
from icg.generation import is_marked_generated, save_generated_png
from icg.safety import OutputExistsError
from icg.world.ab import simulate_ab
from icg.world.config import WorldConfig
from icg.world.generate import generate_world
from icg.world.truth import Truth


@pytest.fixture(scope="module")
def best(world, tmp_path_factory) -> str:
    return str(_manifest(world, tmp_path_factory.mktemp("best"), best=True))


@pytest.fixture(scope="module")
def same(world, tmp_path_factory) -> str:
    return str(_manifest(world, tmp_path_factory.mktemp("same"), best=False))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    cfg = WorldConfig(n_items=30, n_users=80, n_impressions=2000, seed=21)
    return generate_world(tmp_path_factory.mktemp("w") / "world", cfg)


def _manifest(world: Path, folder: Path, best: bool) -> Path:
    """A generation manifest for 40 users x 4 items: the truth's best covers (best=True) or the
    items' own reference covers, saved as marked generated PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    users = pd.read_parquet(world / "users.parquet")["user_id"].tolist()[:40]
    items = pd.read_parquet(world / "items.parquet")
    items = items.iloc[:4]
    pairs = [(u, i) for u in users for i in items["item_id"]]
    if best:
        images = Truth(world).oracle_covers([u for u, _ in pairs], [i for _, i in pairs])
    else:
        ref = dict(zip(items["item_id"], items["image"], strict=True))
        images = [np.asarray(Image.open(world / ref[i])) for _, i in pairs]
    rows = []
    for (u, i), image in zip(pairs, images, strict=True):
        path = folder / f"{u}_{i}.png"
        save_generated_png(Image.fromarray(image), path)
        rows.append({"user_id": u, "item_id": i, "method": "icg", "path": str(path)})
    pd.DataFrame(rows).to_parquet(folder / "manifest.parquet")
    return folder / "manifest.parquet"


def test_the_log_is_a_platform_folder_with_arms_and_generated_variants(world, best, tmp_path):
    arms = {"control": "reference", "icg": best}
    summary = simulate_ab(world, arms, 6000, seed=1, out=tmp_path / "ab")
    data = load_dataset(tmp_path / "ab")  # the data layer's policy: paths, images, sizes
    imp = data.impressions
    assert len(imp) == 6000  # nothing rejected
    assert set(imp["arm"]) == {"control", "icg"}
    assert summary["users"]["control"] + summary["users"]["icg"] == 40
    gen = imp[imp["arm"] == "icg"]
    assert gen["cover"].nunique() == gen["cover_id"].nunique() > 4  # a variant per (user, item)
    assert all(is_marked_generated(p) for p in gen["cover"].unique())
    assert all(Path(p).is_relative_to(tmp_path / "ab") for p in imp["cover"].unique())
    ctrl = imp[imp["arm"] == "control"]
    assert (ctrl["cover_id"] == "ref:" + ctrl["item_id"]).all()
    assert imp.groupby("user_id")["arm"].nunique().max() == 1
    assert (tmp_path / "ab" / "truth" / "impressions.parquet").is_file()


def test_the_same_log_whatever_the_chunk_size(world, same, tmp_path):
    arms = {"control": "reference", "icg": same}
    a = simulate_ab(world, arms, 3000, seed=2, out=tmp_path / "a", chunk_impressions=100)
    b = simulate_ab(world, arms, 3000, seed=2, out=tmp_path / "b", chunk_impressions=10**6)
    assert a == b and a["impressions"] == 3000
    ta, tb = (pd.read_parquet(tmp_path / x / "impressions.parquet") for x in ("a", "b"))
    pd.testing.assert_frame_equal(ta, tb)


def test_users_keep_their_arm_across_experiments_of_one_seed(world, same, tmp_path):
    arms = {"control": "reference", "icg": same}
    simulate_ab(world, arms, 2000, seed=5, out=tmp_path / "a")
    simulate_ab(world, arms, 4000, seed=5, out=tmp_path / "b")
    ta, tb = (pd.read_parquet(tmp_path / x / "impressions.parquet") for x in ("a", "b"))
    arm_a = ta.groupby("user_id")["arm"].first()
    arm_b = tb.groupby("user_id")["arm"].first()
    common = arm_a.index.intersection(arm_b.index)
    assert (arm_a[common] == arm_b[common]).all()


def test_better_covers_win_online_and_identical_ones_do_not(world, best, same, tmp_path):
    summary = simulate_ab(world, {"control": "reference", "icg": best}, 20_000, 3, tmp_path / "b")
    assert summary["offline_lift"]["icg"] > 0.1  # the truth's best covers, scored offline
    report = ab_report(load_log(tmp_path / "b", "arm"), "arm", control="control")
    assert report["lift"]["icg"]["ctr"]["low"] > 0
    assert not report["srm"]["mismatch"]
    summary = simulate_ab(world, {"control": "reference", "icg": same}, 20_000, 3, tmp_path / "s")
    assert summary["offline_lift"]["icg"] == pytest.approx(0.0, abs=1e-6)
    report = ab_report(load_log(tmp_path / "s", "arm"), "arm", control="control")
    assert report["lift"]["icg"]["ctr"]["low"] < 0 < report["lift"]["icg"]["ctr"]["high"]


def test_bad_arms_are_refused(world, tmp_path):
    with pytest.raises(OutputExistsError, match="not empty"):
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "f").write_text("")
        simulate_ab(world, {"control": "reference"}, 10, 0, tmp_path / "x")
    manifest = tmp_path / "m.parquet"
    pd.DataFrame({"user_id": ["u00000"], "item_id": ["i00000"], "path": ["a.png"]}).to_parquet(
        manifest
    )
    with pytest.raises(ValueError, match="lacks columns"):
        simulate_ab(world, {"control": "reference", "icg": str(manifest)}, 10, 0, tmp_path / "y")


def test_cli_runs_the_experiment_and_its_report(world, same, tmp_path):
    from typer.testing import CliRunner

    from icg.cli import build_app

    app, runner = build_app(), CliRunner()
    args = ["world", "ab", "--data", str(world), "--arm", "control=reference", "--arm",
            f"icg={same}", "--impressions", "2000", "--seed", "4", "--out", str(tmp_path / "ab")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "not empty" in again.output
    report = runner.invoke(app, ["ab", "report", "--data", str(tmp_path / "ab"), "--control",
                                 "control", "--out", str(tmp_path / "r")])  # fmt: skip
    assert report.exit_code == 0, report.output
    assert (tmp_path / "r" / "ab.html").is_file()
    bad = runner.invoke(app, [*args[:4], "--arm", "icg", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "NAME=reference" in bad.output


def test_the_preference_model_learns_from_the_a_b_log_without_reading_truth(
    world, best, tmp_path, monkeypatch
):
    """`icg train preference` on an A/B log: generated covers are covers like any other, and
    the log's truth/ stays unread (the simulator wrote it; training never opens it)."""
    from open_spy import spy_on_opens

    from icg.rewards.testing import tiny_clip
    from icg.training.preference import PreferenceConfig, train_preference

    simulate_ab(world, {"control": "reference", "icg": best}, 3000, 6, tmp_path / "ab")
    opened = spy_on_opens(monkeypatch)
    cfg = PreferenceConfig(epochs=1, batch_size=64, rank=4, hidden_dim=8)
    result = train_preference(tmp_path / "ab", tmp_path / "pref", cfg, towers=tiny_clip())
    assert any("/images/ab/icg/" in p for p in result.data.cover_paths)
    assert not [p for p in opened if "/truth/" in p or p.endswith("/truth")]


# ---- an `icg batch` output as an arm ---------------------------------------------------------


def _batch_output(world: Path, out: Path, n_segments: int = 3, seed: int = 0) -> Path:
    """A batch output folder for every world user x the first 4 items, written with the batch's
    own writers: its k-means segments (`icg.segments`), plan, settings and manifest; each
    (segment, item) cover is the truth's best cover for the segment's first user, saved as a
    marked generated PNG where the batch puts it."""
    from icg.batch.manifest import write_part
    from icg.batch.plan import cover_path, save_plan, unit_table
    from icg.segments import segment

    users = pd.read_parquet(world / "users.parquet")
    items = pd.read_parquet(world / "items.parquet").iloc[:4]
    segments = segment(users, "kmeans", n_segments, seed)
    units = [(s, i) for i in items["item_id"] for s in range(len(segments.table))]
    table = unit_table(units, segments.table, items, None, seed)
    save_plan(out, segments, table)
    (out / "plan" / "settings.json").write_text(
        json.dumps(
            {"segments": n_segments, "segment_by": "kmeans", "seed": seed, "data": str(world)}
        )  # fmt: skip
    )
    first = segments.users.groupby("segment")["user_id"].first()
    images = Truth(world).oracle_covers(first.loc[table["segment"]].tolist(), table["item_id"])
    paths = [cover_path(s, i, 0) for s, i in zip(table["segment"], table["item_id"], strict=True)]
    for path, image in zip(paths, images, strict=True):
        save_generated_png(Image.fromarray(image), out / path)
    rows = table.assign(segment_key=table["key"], path=paths, candidate=0, score=np.nan,
                        scores=[[] for _ in paths])  # fmt: skip
    write_part(out, 0, rows)
    return out


@pytest.fixture(scope="module")
def batch(world, tmp_path_factory) -> Path:
    return _batch_output(world, tmp_path_factory.mktemp("batch") / "out")


def test_a_batch_arm_shows_each_user_their_segments_cover(world, batch, tmp_path):
    summary = simulate_ab(world, {"control": "reference", "icg": str(batch)}, 6000, 7,
                          tmp_path / "ab")  # fmt: skip
    data = load_dataset(tmp_path / "ab")  # the data layer's policy: paths, images, sizes, marker
    imp = data.impressions
    assert len(imp) == 6000  # nothing rejected
    assert sum(summary["users"].values()) == 80  # every user the batch planned for
    own = pd.read_parquet(batch / "plan" / "users.parquet").set_index("user_id")["segment"]
    gen = imp[imp["arm"] == "icg"]
    expected = [f"icg:s{own[u]}:{i}" for u, i in zip(gen["user_id"], gen["item_id"], strict=True)]
    assert gen["cover_id"].tolist() == expected
    assert 4 < gen["cover"].nunique() <= 3 * 4  # one copy per (segment, item), however many users
    for cover, cid in gen.drop_duplicates("cover")[["cover", "cover_id"]].itertuples(index=False):
        _, seg, item = cid.split(":")
        source = batch / "covers" / f"s{int(seg[1:]):05d}" / f"{item}_c0.png"
        assert Path(cover).read_bytes() == source.read_bytes()
        assert is_marked_generated(cover)
    assert summary["offline_lift"]["icg"] > 0.05  # the truth's best covers for each segment


def test_a_batch_whose_segments_do_not_match_the_world_is_refused(world, batch, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(batch, moved)
    users = pd.read_parquet(moved / "plan" / "users.parquet")
    users["segment"] = np.roll(users["segment"].to_numpy(), 1)  # users in other segments
    users.to_parquet(moved / "plan" / "users.parquet")
    arms = {"control": "reference", "icg": str(moved)}
    with pytest.raises(ValueError, match=r"do not match this world's users: .* users fall in"):
        simulate_ab(world, arms, 100, 0, tmp_path / "a")
    users["user_id"] = users["user_id"] + "x"  # users this world has never had
    users.to_parquet(moved / "plan" / "users.parquet")
    with pytest.raises(ValueError, match=r"80 users this world does not have \(e.g. \['u"):
        simulate_ab(world, arms, 100, 0, tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="not an icg batch output"):
        simulate_ab(world, {"control": "reference", "icg": str(tmp_path)}, 100, 0, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_batch_of_another_world_is_refused(batch, tmp_path):
    other = generate_world(tmp_path / "w2", WorldConfig(n_items=30, n_users=80,
                                                        n_impressions=200, seed=22))  # fmt: skip
    with pytest.raises(ValueError, match="ran on other data|do not match this world's users"):
        simulate_ab(other, {"control": "reference", "icg": str(batch)}, 100, 0, tmp_path / "a")
