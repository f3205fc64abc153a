"""Batch generation (`icg batch`): work units, resume, determinism, assignments, Ray Data."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from model_fixtures import perturb_, tiny_icg, tiny_qwen2vl
from open_spy import spy_on_opens
from typer.testing import CliRunner

from icg.batch import BatchConfig, run_batch
from icg.batch.assign import PreferencePicker
from icg.batch.manifest import MANIFEST_SCHEMA, read_manifest
from icg.batch.plan import (
    auto_partition_size,
    cover_path,
    nearest_segments,
    unit_table,
    work_units,
)
from icg.batch.worker import CoverWorker
from icg.generation import is_marked_generated, pair_seed
from icg.models.preference import PreferenceModel
from icg.rewards.testing import tiny_clip
from icg.safety import UnsafePathError
from icg.world.config import WorldConfig
from icg.world.generate import generate_world

USER_DIM = 4
N_ITEMS, N_USERS = 3, 8
SRC = Path(__file__).resolve().parents[1] / "src" / "icg" / "batch"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny CoverWorld (with truth/), and a run folder that loads from disk: icg/adapter
    (tiny SD + tiny MLLM by path, a perturbed adapter) and a tiny preference model."""
    root = tmp_path_factory.mktemp("batch")
    world = generate_world(
        root / "w",
        WorldConfig(n_items=N_ITEMS, n_users=N_USERS, n_impressions=60, embedding_dim=USER_DIM),
    )
    base, model = tiny_icg(user_dim=USER_DIM)
    perturb_(model)  # a "trained" adapter: users change the covers
    base.save_pretrained(root / "sd")
    mllm, processor = tiny_qwen2vl()
    mllm.save_pretrained(root / "mllm")
    processor.save_pretrained(root / "mllm")
    model.adapter.register_to_config(base_model=str(root / "sd"))
    model.encoder.register_to_config(mllm_name_or_path=str(root / "mllm"))
    model.save_pretrained(root / "run" / "icg" / "adapter")
    clip = tiny_clip(image_size=32, projection_dim=16)
    clip.model.save_pretrained(root / "clip")
    clip.tokenizer.save_pretrained(root / "clip")
    torch.manual_seed(0)
    pm = PreferenceModel(
        image_dim=16, user_dim=USER_DIM, rank=4, hidden_dim=8, clip_name_or_path=str(root / "clip")
    )
    with torch.no_grad():
        pm.user_proj.weight.normal_()
    pm.save_pretrained(root / "run" / "preference")
    return root, world


def config(setup, out: Path, **kw) -> BatchConfig:
    root, world = setup
    values = dict(
        run=root / "run", data=world, out=out, segments=2, candidates=2, engine="local",
        num_inference_steps=2, guidance_scale=1.0, batch_size=3, partition_size=2, threads=1,
    )  # fmt: skip
    return BatchConfig(**{**values, **kw})


def digests(out: Path) -> dict[str, str]:
    """Every cover under OUT by its path relative to OUT: sha1 of the bytes."""
    return {
        str(p.relative_to(out)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted((out / "covers").rglob("*.png"))
    }


# ---- pure planning ------------------------------------------------------------------------


def test_work_units_are_deduped_per_segment_and_item():
    pairs = [("a", "i1"), ("b", "i1"), ("c", "i1"), ("a", "i0"), ("a", "i0")]
    own = {"a": [0], "b": [0], "c": [1]}  # a and b share segment 0
    assert work_units(pairs, own) == [(0, "i0"), (0, "i1"), (1, "i1")]
    # users who choose among several segments need those segments' covers too
    assert work_units(pairs, {"a": [0, 1], "b": [0], "c": [1]}) == [
        (0, "i0"), (1, "i0"), (0, "i1"), (1, "i1"),
    ]  # fmt: skip


def test_unit_table_partitions_and_seeds():
    segments = pd.DataFrame({"segment": [0, 1], "key": ["segment-0", "segment-1"]})
    items = pd.DataFrame({"item_id": ["i0", "i1"], "title": ["A", "B"], "image": ["a", "b"]})
    units = unit_table([(0, "i0"), (1, "i0"), (0, "i1")], segments, items, 2, seed=7)
    assert units["partition"].tolist() == [0, 0, 1]
    assert [auto_partition_size(n) for n in (10, 6_400, 10**8)] == [8, 100, 1024]
    assert units["seed"].tolist() == [
        pair_seed(7, "segment-0", "i0"), pair_seed(7, "segment-1", "i0"),
        pair_seed(7, "segment-0", "i1"),
    ]  # fmt: skip
    assert cover_path(3, "a/b", 1) != cover_path(3, "a_b", 1)  # unsafe ids do not collide
    assert "/" not in cover_path(3, "a/b", 1).split("/", 2)[2]


def test_nearest_segments_put_the_users_own_first():
    seg = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], dtype=np.float32)
    users = np.array([[0.9, 0.0], [4.0, 0.0]], dtype=np.float32)
    near = nearest_segments(users, seg, own=np.array([0, 2]), m=2)
    assert near.tolist() == [[0, 1], [2, 1]]
    assert nearest_segments(users, seg, np.array([0, 2]), None).shape == (2, 3)


def test_batch_code_never_imports_the_truth():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = [n for n in names if n.startswith(("icg.world", "icg.evaluation"))]
            assert not bad, f"{path.name} imports {bad}"


# ---- the local engine ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_run(setup, tmp_path_factory):
    """One local batch as if Ray were not installed, watched for every file it opens."""
    out = tmp_path_factory.mktemp("local") / "out"
    with pytest.MonkeyPatch.context() as mp:
        opened = spy_on_opens(mp)
        mp.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
        result = run_batch(config(setup, out))
    return out, result, opened


def test_local_batch_writes_every_segment_item_cover_once(setup, local_run):
    root, world = setup
    out, result, opened = local_run
    assert result.segments == 2 and result.units == 2 * N_ITEMS and result.images == 4 * N_ITEMS
    covers = digests(out)
    assert len(covers) == 2 * N_ITEMS * 2  # segments × items × candidates
    assert all(is_marked_generated(out / p) for p in covers)
    manifest = read_manifest(out)
    assert set(MANIFEST_SCHEMA.names) <= set(manifest.columns)
    assert (
        len(manifest) == 2 * N_ITEMS and manifest[["segment", "item_id"]].value_counts().max() == 1
    )
    for row in manifest.itertuples():
        assert row.path == cover_path(row.segment, row.item_id, row.candidate)
        assert row.seed == pair_seed(0, row.segment_key, row.item_id, row.candidate)
        assert row.candidate == int(np.argmax(row.scores)) and row.score == max(row.scores)
    assert not [p for p in opened if f"{os.sep}truth" in p], "batch read the hidden truth"


def test_assignments_let_each_user_pick_among_the_items_segment_covers(setup, local_run):
    root, world = setup
    out, result, _ = local_run
    a = pd.read_parquet(out / "assignments.parquet")
    assert len(a) == N_USERS * N_ITEMS and not a.duplicated(["user_id", "item_id"]).any()
    own = pd.read_parquet(out / "plan" / "users.parquet").set_index("user_id")["segment"]
    assert (a["segment"].to_numpy() == own.loc[a["user_id"]].to_numpy()).all()
    # the pick is the preference model's best among every segment's candidates of the item
    picker = PreferencePicker(root / "run" / "preference", out)
    users = pd.read_parquet(world / "users.parquet").set_index("user_id")
    for item_id, group in a.groupby("item_id"):
        options = [cover_path(s, item_id, k) for s in (0, 1) for k in (0, 1)]
        ids = group["user_id"].tolist()
        emb = np.stack(users.loc[ids, "embedding"].to_numpy()).astype(np.float32)
        logit = picker.logits(ids, emb, picker.cover_features(options))  # (U, 4)
        assert group["path"].tolist() == [options[b] for b in logit.argmax(1)]
        np.testing.assert_allclose(group["score"], logit.max(1), rtol=1e-5)


def test_segment_pick_gives_every_user_their_segments_cover(setup, local_run, tmp_path):
    out, _, _ = local_run
    seg = run_batch(config(setup, tmp_path / "seg", pick="segment"))
    assert digests(tmp_path / "seg") == digests(out)  # the same draws; only the pick differs
    kept = seg.manifest.set_index(["segment", "item_id"])["path"]
    a = seg.assignments
    assert (a["cover_segment"] == a["segment"]).all() and a["score"].isna().all()
    assert (
        a["path"].tolist() == kept.loc[list(zip(a["segment"], a["item_id"], strict=True))].tolist()
    )


def test_outputs_do_not_depend_on_batch_size(setup, local_run, tmp_path):
    out, result, _ = local_run
    other = run_batch(config(setup, tmp_path / "b1", batch_size=1, partition_size=2))
    assert digests(tmp_path / "b1") == digests(out)
    cols = ["unit", "segment", "item_id", "path", "candidate", "seed"]
    pd.testing.assert_frame_equal(other.manifest[cols], result.manifest[cols])


def test_resume_after_a_kill_leaves_no_duplicate_and_no_missing_cover(setup, local_run, tmp_path):
    out, result, _ = local_run
    calls = []
    real = CoverWorker.run_partition

    def dies_in_the_second_partition(self, partition):
        calls.append(partition)
        if len(calls) == 2:  # killed in the second partition:
            real(self, partition)  # its covers are on disk ...
            (self.out / "manifest" / f"partition={partition:05d}" / "part.parquet").unlink()
            (self.out / "manifest" / f"partition={partition:05d}" / ".tmp-part").touch()
            raise KeyboardInterrupt  # ... but its part was never written
        return real(self, partition)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CoverWorker, "run_partition", dies_in_the_second_partition)
        with pytest.raises(KeyboardInterrupt):
            run_batch(config(setup, tmp_path / "r"))
    resumed = run_batch(config(setup, tmp_path / "r"))
    assert resumed.skipped == 1 and resumed.images == 2 * 2  # the last partition, drawn now
    manifest = read_manifest(tmp_path / "r")
    assert manifest["unit"].tolist() == list(range(2 * N_ITEMS))  # none missing, none twice
    assert digests(tmp_path / "r") == digests(out)
    assert len(pd.read_parquet(tmp_path / "r" / "assignments.parquet")) == N_USERS * N_ITEMS
    again = run_batch(config(setup, tmp_path / "r"))
    assert again.images == 0 and again.skipped == again.partitions


def test_other_settings_in_the_same_out_and_an_out_inside_the_data_are_refused(setup, local_run):
    out, _, _ = local_run
    with pytest.raises(ValueError, match="candidates: 2 -> 1"):
        run_batch(config(setup, out, candidates=1))
    root, world = setup
    with pytest.raises(UnsafePathError, match="inside the input folder"):
        run_batch(config(setup, world / "out"))
    assert not (world / "out").exists()


def test_partitioned_users_with_their_own_segment_column(setup, tmp_path):
    root, world = setup
    data = tmp_path / "data"
    data.mkdir()
    shutil.copytree(world / "images" / "ref", data / "images" / "ref")
    pd.read_parquet(world / "items.parquet").to_parquet(data / "items.parquet")
    users = pd.read_parquet(world / "users.parquet")
    users["segment"] = ["young" if k % 3 else "old" for k in range(len(users))]
    for region in ("eu", "us"):  # hive partitions: users/region=eu/part.parquet
        part = users.iloc[: len(users) // 2] if region == "eu" else users.iloc[len(users) // 2 :]
        (data / "users" / f"region={region}").mkdir(parents=True)
        part.to_parquet(data / "users" / f"region={region}" / "part.parquet")
    result = run_batch(
        config(setup, tmp_path / "out", data=data, segment_by="column", candidates=1)
    )
    keys = sorted(result.manifest["segment_key"].unique())
    assert keys == ["segment-old", "segment-young"] and result.units == 2 * N_ITEMS
    plan = pd.read_parquet(tmp_path / "out" / "plan" / "users.parquet")
    expected = users.set_index("user_id")["segment"].map({"old": 0, "young": 1})
    assert plan.set_index("user_id")["segment"].to_dict() == expected.to_dict()


def test_cli_batch_local(setup, tmp_path):
    from icg.cli import build_app

    root, world = setup
    args = ["batch", "--run", str(root / "run"), "--data", str(world), "--out",
            str(tmp_path / "o"), "--segments", "2", "--engine", "local", "--steps", "2",
            "--guidance", "1", "--pick", "segment"]  # fmt: skip
    dry = CliRunner().invoke(build_app(), [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert '"segments": 2' in dry.output and not (tmp_path / "o").exists()
    (tmp_path / "b.yaml").write_text("segments: 5\ncandidates: 3\n")
    both = ["--config", str(tmp_path / "b.yaml"), "--dry-run"]
    from_file = CliRunner().invoke(build_app(), [*args, *both])  # the command line wins
    assert '"segments": 2' in from_file.output and '"candidates": 3' in from_file.output
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    assert len(pd.read_parquet(tmp_path / "o" / "assignments.parquet")) == N_USERS * N_ITEMS
    bad = CliRunner().invoke(build_app(), [*args, "--engine", "local", "--workers", "2"])
    assert bad.exit_code != 0 and "engine local" in bad.output


# ---- Ray Data -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance():
    import ray  # an installed extra under `make test` (icg[ray]): a failing import fails

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.mark.slow  # starts a local Ray instance (tens of seconds) and two Ray Data workers
def test_ray_engine_draws_the_same_covers_with_two_workers(setup, local_run, ray_instance):
    out, result, _ = local_run
    ray_out = out.parent / "ray"
    got = run_batch(config(setup, ray_out, engine="ray", workers=2, batch_size=4, threads=None))
    assert ray_instance.is_initialized()  # a Ray instance it did not start is left running
    assert got.units == 2 * N_ITEMS and got.images == 4 * N_ITEMS
    assert digests(ray_out) == digests(out)
    cols = ["unit", "segment", "item_id", "path", "candidate", "seed"]
    pd.testing.assert_frame_equal(got.manifest[cols], result.manifest[cols])
    pd.testing.assert_frame_equal(got.assignments, result.assignments)
