"""`benchmarks/online_ab.py` end to end on a tiny world and a tiny run loaded from disk: batch
covers -> simulated A/B -> report -> offline truth lift, and one loop round's agreement."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline
from model_fixtures import get_dummy_components, perturb_, tiny_icg, tiny_qwen2vl
from stage_b_fixtures import stage_b_rewards

from icg.models.preference import PreferenceModel
from icg.rewards.testing import tiny_clip
from icg.world.config import WorldConfig
from icg.world.generate import generate_world

USER_DIM = 4
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str = "online_ab"):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_run(root: Path) -> Path:
    """RUN/align, RUN/icg (a perturbed adapter on a tiny SD + tiny MLLM saved by path) and
    RUN/preference (a tiny preference model on a tiny CLIP saved by path)."""
    base, model = tiny_icg(user_dim=USER_DIM, num_meta_tokens=2)
    perturb_(model)
    base.save_pretrained(root / "sd")
    mllm, processor = tiny_qwen2vl()
    mllm.save_pretrained(root / "mllm")
    processor.save_pretrained(root / "mllm")
    model.adapter.register_to_config(base_model=str(root / "sd"))
    model.encoder.register_to_config(mllm_name_or_path=str(root / "mllm"))
    for stage in ("align", "icg"):
        model.save_pretrained(root / "run" / stage / "adapter")
    clip = tiny_clip(image_size=32, projection_dim=16)
    clip.model.save_pretrained(root / "clip")
    clip.tokenizer.save_pretrained(root / "clip")
    torch.manual_seed(0)
    pm = PreferenceModel(image_dim=16, user_dim=USER_DIM, rank=4, hidden_dim=8,
                         clip_name_or_path=str(root / "clip"))  # fmt: skip
    with torch.no_grad():
        pm.user_proj.weight.normal_()
    pm.save_pretrained(root / "run" / "preference")
    # the training seeds the runs recorded, which the loop round inherits
    (root / "run" / "icg" / "config.yaml").write_text("seed: 2\n")
    (root / "run" / "preference" / "train_config.yaml").write_text("seed: 3\n")
    return root / "run"


def _reward_parts() -> dict:
    base = StableDiffusionPipeline(**get_dummy_components())
    base.set_progress_bar_config(disable=True)
    mllm, processor = tiny_qwen2vl()
    return {"base": base, "mllm": mllm, "processor": processor, "rewards": stage_b_rewards()}


@pytest.mark.slow
def test_online_ab_runs_end_to_end_on_a_tiny_run(tmp_path):
    cfg = WorldConfig(n_items=4, n_users=24, n_impressions=600, embedding_dim=USER_DIM, seed=5)
    world = generate_world(tmp_path / "world", cfg)
    run = _tiny_run(tmp_path)
    loop_cfg = tmp_path / "loop.yaml"  # JSON is YAML
    loop_cfg.write_text(json.dumps({
        "preference": {"epochs": 1, "batch_size": 16, "rank": 4, "hidden_dim": 8,
                       "negatives_per_positive": 2},
        "reward": {"batch_size": 2, "truncation_k": 1, "learning_rate": 1e-2, "resolution": 32,
                   "checkpoint_every": 1, "cold_start_fraction": 0.5, "num_inference_steps": 2,
                   "candidates": 2, "pairs_per_round": 2, "steps_per_round": 1},
    }))  # fmt: skip
    out = tmp_path / "online"
    argv = ["--world", str(world), "--run", str(run), "--out", str(out), "--segments", "2",
            "--impressions", "3000", "--seed", "1", "--num-inference-steps", "2",
            "--guidance-scale", "1.0", "--threads", "1", "--loop-round", "--loop-users", "3",
            "--loop-items", "2", "--loop-segments", "2", "--loop-reward-steps", "1", "--draws", "3",
            "--loop-config", str(loop_cfg), "--json", str(tmp_path / "r.json")]  # fmt: skip
    result = _script().main(argv, towers=tiny_clip(image_size=32, projection_dim=16),
                            reward_parts=_reward_parts)  # fmt: skip
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(
        (out / "online.json").read_text()
    )
    # (a) the batch drew every item for each of its 2 segments, and (b) the A/B showed them
    manifest = pd.concat(
        pd.read_parquet(p) for p in (out / "batch" / "manifest").rglob("*.parquet")
    )
    assert len(manifest) == 2 * 4
    assert result["impressions"] == 3000 and sum(result["users"].values()) == 24
    log = pd.read_parquet(out / "ab" / "impressions.parquet")
    assert log.loc[log["arm"] == "icg", "cover_id"].str.match(r"icg:s[01]:").all()
    # (c) the report and (d) the offline lift on the shown pairs, and whether they agree
    assert (out / "report" / "ab.html").is_file()
    online, offline = result["online"]["ctr"], result["offline"]
    assert online["low"] < online["lift"] < online["high"]
    assert offline["pairs"] == log.groupby(["user_id", "item_id"]).ngroups
    assert offline["impressions"] == 3000
    expected = offline["true_ctr"]["icg"] / offline["true_ctr"]["control"] - 1
    assert offline["lift"] == pytest.approx(expected)
    assert result["agree"] == (online["low"] <= offline["lift"] <= online["high"])
    # (e) one loop round: agreement over 3 draws of 3 x 2 pairs, before and after, paired
    lr = result["loop_round"]
    assert lr["pairs"] == 6 and lr["draws"] == 3
    assert set(lr["agreement"]) == {"before", "after", "after_same_covers"}
    same = lr["agreement_same_covers_paired"]
    assert same["before"] == pytest.approx(lr["agreement"]["before"]) or same["pairs"] < 6
    # the round showed its batch covers (2 segments x 2 items) to every icg-arm user, and its
    # stage B and preference retrain kept the run's recorded seeds
    assert lr["covers"] == "batch" and lr["seeds"] == {"reward": 2, "preference": 3}
    loop_log = pd.read_parquet(out / "loop" / "round_1" / "ab" / "impressions.parquet")
    icg_users = set(loop_log.loc[loop_log["arm"] == "icg", "user_id"])
    assert len(icg_users) > 3 and lr["loop"]["icg_impressions"] == (loop_log["arm"] == "icg").sum()
    stage_b = yaml.safe_load((out / "loop" / "round_1" / "icg" / "config.yaml").read_text())
    assert stage_b["seed"] == 2 and Path(stage_b["data"]).resolve() == world.resolve()
    assert all(np.isnan(v) or -1 <= v <= 1 for v in lr["agreement"].values())
    one = lr["one_draw_true_ctr"]
    assert one["pairs"] == 6 and one["diff"] == pytest.approx(one["after"] - one["before"])
    assert lr["impressions_spent"] == 3000
    assert (out / "loop" / "round_1" / "icg" / "adapter" / "icg_config.json").is_file()
    # the round's reward half over seeds (benchmarks/loop_agreement_seeds.py): per seed a fresh
    # A/B of the round's covers and two preference fits (world logs / plus the A/B's), scored on
    # the same draws; runs are the interval's unit, and --pool joins results
    seeds = tmp_path / "seeds.json"
    agree = _script("loop_agreement_seeds").main([
        "--world", str(world), "--run", str(run), "--round", str(out / "loop" / "round_1"),
        "--out", str(tmp_path / "agree"), "--seeds", "0,1", "--users", "3", "--items", "2",
        "--draws", "3", "--seed", "1", "--threads", "1", "--control", "--json", str(seeds)])  # fmt: skip
    assert agree["pairs"] == 6 and set(agree["runs"]) == {"0", "1"}
    assert agree["after_minus_before"]["n"] == 2 and agree["after_minus_control"]["n"] == 2
    # the control is the same experiment with the platform's pixels: the same users in the same
    # arms, the same items and impressions (the ranker orders each page by what it shows)
    shown = pd.read_parquet(tmp_path / "agree" / "ab-s0" / "impressions.parquet")
    control = pd.read_parquet(tmp_path / "agree" / "platform-s0" / "impressions.parquet")
    assert shown[["user_id", "arm"]].equals(control[["user_id", "arm"]])
    assert set(shown["item_id"]) == set(control["item_id"])
    items = pd.read_parquet(world / "items.parquet").set_index("item_id")["image"]
    arm = pd.read_parquet(tmp_path / "agree" / "platform-arm" / "manifest.parquet")
    paths = zip(arm["item_id"], arm["path"], strict=True)
    assert all(Path(p) == (world / items[i]).resolve() for i, p in paths)
    diffs = [r["diff"] for r in agree["runs"].values()]
    assert agree["after_minus_before"]["mean"] == pytest.approx(np.mean(diffs))
    for s in (0, 1):
        cfg = yaml.safe_load((tmp_path / "agree" / f"after-s{s}" / "train_config.yaml").read_text())
        assert cfg["seed"] == s
        ab = json.loads((tmp_path / "agree" / f"ab-s{s}" / "experiment.json").read_text())
        assert ab["impressions"] == 3000
    pooled = _script("loop_agreement_seeds").main(["--pool", str(seeds), str(seeds)])
    assert pooled["after_minus_before"]["n"] == 4 and pooled["after_minus_control"]["n"] == 4
