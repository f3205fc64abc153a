"""`icg loop`: two rounds of batch covers -> simulated A/B -> preference -> stage B on tiny
models, resumed round by round; a round of per-pair covers; the seeds a round inherits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml
from diffusers import StableDiffusionPipeline
from model_fixtures import get_dummy_components, perturb_, tiny_icg
from stage_b_fixtures import stage_b_rewards

from icg.loop import (
    LoopConfig,
    experiment_items,
    experiment_pairs,
    inherited_seed,
    merge_logs,
    run_loop,
)
from icg.world.config import WorldConfig
from icg.world.generate import generate_world

USER_DIM = 4


def _base():
    base = StableDiffusionPipeline(**get_dummy_components())
    base.set_progress_bar_config(disable=True)
    return base


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from icg.models.icg_model import ICGModel
    from icg.pipeline import ICGPipeline
    from icg.rewards.testing import tiny_clip

    root = tmp_path_factory.mktemp("loop")
    cfg = WorldConfig(n_items=5, n_users=8, n_impressions=400, embedding_dim=USER_DIM, seed=4)
    world = generate_world(root / "world", cfg)
    _, model = tiny_icg(user_dim=USER_DIM, num_meta_tokens=2)
    perturb_(model)
    model.save_pretrained(root / "run" / "align" / "adapter")
    # the seeds the start run and its preference model trained with (their records' `seed`)
    (root / "run" / "align" / "config.yaml").write_text(yaml.safe_dump({"seed": 7}))
    (root / "run" / "preference").mkdir(parents=True)
    (root / "run" / "preference" / "train_config.yaml").write_text(
        yaml.safe_dump({"seed": 5, "ips_clip": 0.1})
    )
    mllm, processor = model.encoder.mllm, model.encoder.processor

    def pipeline(adapter: Path):
        adapter = adapter / "adapter" if (adapter / "adapter").is_dir() else adapter
        icg = ICGModel.from_pretrained(adapter, mllm=mllm, processor=processor)
        return ICGPipeline(_base(), icg)

    def parts() -> dict:
        return {"base": _base(), "mllm": mllm, "processor": processor,
                "rewards": stage_b_rewards()}  # fmt: skip

    loop = LoopConfig(
        world=world, run=root / "run", out=root / "out", rounds=1, start="align",
        users=3, items=2, impressions=600, num_inference_steps=2, reward_steps=2,
        preference={"epochs": 1, "batch_size": 16, "rank": 4, "hidden_dim": 8,
                    "negatives_per_positive": 2},
        reward={"batch_size": 2, "truncation_k": 1, "learning_rate": 1e-2, "checkpoint_every": 1,
                "resolution": 32, "cold_start_fraction": 0.5, "num_inference_steps": 3,
                "candidates": 2, "pairs_per_round": 2, "steps_per_round": 1},
    )  # fmt: skip
    return loop, {"pipeline": pipeline, "towers": tiny_clip(), "reward_parts": parts}


def test_two_rounds_resume_round_by_round(setup, caplog):
    loop, parts = setup
    one = run_loop(loop, **parts)
    assert [r["round"] for r in one["rounds"]] == [1]
    with caplog.at_level(logging.INFO, logger="icg.loop"):
        two = run_loop(loop.model_copy(update={"rounds": 2}), **parts)
    skipped = [r.getMessage() for r in caplog.records if "done already" in r.getMessage()]
    assert len(skipped) == 6 and all(m.startswith("round 1") for m in skipped)
    assert two["rounds"][0] == one["rounds"][0]
    r2 = two["rounds"][1]
    assert r2["impressions"] == 600 and r2["impressions_total"] == 1200
    assert set(r2["offline_true_ctr"]) == {"control", "icg"}
    saved = json.loads((loop.out / "loop.json").read_text())
    assert len(saved["rounds"]) == 2
    # round 2's preference model learned from both rounds' impressions of generated covers
    data = pd.read_parquet(loop.out / "round_2" / "data" / "impressions.parquet")
    assert {"r1", "r2"} <= set(data["event_id"].str.split("-").str[0])
    assert not (loop.out / "round_2" / "data" / "truth").exists()
    pref = json.loads((loop.out / "round_2" / "preference" / "run.json").read_text())
    assert "round_2" in json.dumps(pref)
    # round 2 drew its covers with round 1's stage-B run
    assert (loop.out / "round_1" / "icg" / "adapter" / "icg_config.json").is_file()
    assert (loop.out / "round_2" / "icg" / "adapter" / "icg_config.json").is_file()


def test_batch_covers_reach_every_user_of_the_icg_arm(setup):
    loop, parts = setup
    run_loop(loop, **parts)
    log = pd.read_parquet(loop.out / "round_1" / "ab" / "impressions.parquet")
    icg = log[log["arm"] == "icg"]
    # every icg-arm impression shows a segment's generated cover, beyond the first `users` users
    assert icg["cover_id"].str.match(r"icg:s\d+:").all()
    assert icg["cover"].str.startswith("images/ab/icg/").all()
    first = set(experiment_pairs(loop.world, loop.users, loop.items)["user_id"])
    assert set(icg["user_id"]) - first
    assert set(log["item_id"]) == set(experiment_items(loop.world, loop.items))
    summary = json.loads((loop.out / "loop.json").read_text())
    assert summary["rounds"][0]["icg_impressions"] == len(icg)


def test_round_inherits_the_recorded_seeds_and_trains_stage_b_on_the_world(setup):
    loop, parts = setup
    run_loop(loop, **parts)
    stage_b = yaml.safe_load((loop.out / "round_1" / "icg" / "config.yaml").read_text())
    assert stage_b["seed"] == 7  # RUN/align/config.yaml, not the loop's seed 0
    assert Path(stage_b["data"]).resolve() == loop.world.resolve()  # not round_1/data
    pref = yaml.safe_load((loop.out / "round_1" / "preference" / "train_config.yaml").read_text())
    assert pref["seed"] == 5
    assert pref["ips_clip"] == 0.1  # the rest of RUN/preference's recorded config, too
    assert json.loads((loop.out / "loop.json").read_text())["seeds"] == {
        "reward": 7,
        "preference": 5,
    }


def test_pairs_covers_round_and_seed_overrides(setup, tmp_path):
    loop, parts = setup
    cfg = loop.model_copy(update={"out": tmp_path / "pairs", "covers": "pairs",
                                  "reward_seed": 11, "preference_seed": 12})  # fmt: skip
    summary = run_loop(cfg, **parts)
    manifest = pd.read_parquet(cfg.out / "round_1" / "covers" / "manifest.parquet")
    assert len(manifest) == cfg.users * cfg.items
    log = pd.read_parquet(cfg.out / "round_1" / "ab" / "impressions.parquet")
    shown = log.loc[log["arm"] == "icg", "user_id"]
    assert set(shown) <= set(manifest["user_id"])  # only the drawn pairs' users see covers
    stage_b = yaml.safe_load((cfg.out / "round_1" / "icg" / "config.yaml").read_text())
    pref = yaml.safe_load((cfg.out / "round_1" / "preference" / "train_config.yaml").read_text())
    assert (stage_b["seed"], pref["seed"]) == (11, 12)
    assert summary["seeds"] == {"reward": 11, "preference": 12}


def test_inherited_seed_reads_run_json_and_names_a_bad_file(tmp_path, caplog):
    (tmp_path / "run.json").write_text(json.dumps({"kind": "reward", "config": {"seed": 3}}))
    files = ("config.yaml", "run.json")
    assert inherited_seed(tmp_path, files, None, 0, "stage B") == 3
    assert inherited_seed(tmp_path, files, 9, 0, "stage B") == 9
    (tmp_path / "config.yaml").write_text("seed: 4\n")
    assert inherited_seed(tmp_path, files, None, 0, "stage B") == 4
    with caplog.at_level(logging.WARNING, logger="icg.loop"):
        assert inherited_seed(tmp_path / "none", files, None, 2, "stage B") == 2
    assert "no seed recorded" in caplog.text
    (tmp_path / "config.yaml").write_text("seed: four\n")
    with pytest.raises(ValueError, match="config.yaml: seed"):
        inherited_seed(tmp_path, files, None, 0, "stage B")


def test_merged_logs_validate(setup, tmp_path):
    from icg.data import load_dataset

    loop, _ = setup
    ab = loop.out / "round_1" / "ab"
    if not ab.is_dir():
        pytest.skip("needs the loop's first round")
    merged = merge_logs(loop.world, [ab], tmp_path / "m")
    data = load_dataset(merged)
    assert len(data.impressions) == 400 + 600
