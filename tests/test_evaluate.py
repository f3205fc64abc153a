"""`evaluate_methods` on a tiny world: every column present, lift anchored, files written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from icg.data import load_dataset
from icg.evaluation.evaluate import choose_pairs, evaluate_methods, load_covers
from icg.world.config import WorldConfig
from icg.world.generate import generate_world
from icg.world.truth import Truth


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    from icg.rewards.clip import ClipTowers

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=50,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    return ClipTowers(CLIPModel(cfg).eval())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(
        tmp_path_factory.mktemp("ev") / "w",
        WorldConfig(n_items=12, n_users=20, n_impressions=2000, seed=5),
    )


def test_evaluate_methods_writes_metrics_and_report(world: Path, tmp_path: Path):
    data = load_dataset(world, rejects_dir=tmp_path / "rejects")
    truth = Truth(world)
    pairs = choose_pairs(data, n_users=4, n_items=3, n_cold=1)
    assert len(pairs) == 12 and pairs["user_id"].nunique() == 4
    items = data.items.set_index("item_id")
    sources = {
        "reference": lambda p: load_covers(items.loc[p["item_id"], "image"], 64),
        "oracle": lambda p: truth.oracle_covers(p["user_id"], p["item_id"]),
    }
    metrics = evaluate_methods(
        data, pairs, sources, tmp_path / "eval", clip=tiny_clip(), truth=truth
    )
    ref, orc = metrics["methods"]["reference"], metrics["methods"]["oracle"]
    for key in (
        "fidelity_motif",
        "fidelity_palette",
        "true_aesthetic",
        "true_ctr",
        "lift_fraction",
        "true_ctr_coldstart",
        "diversity",
        "rec_auc",
        "rec_ndcg10",
        "n_pairs",
        "seconds",
    ):
        assert key in ref, key
    assert ref["lift_fraction"] == 0.0 and orc["lift_fraction"] == 1.0
    assert orc["true_ctr"] > ref["true_ctr"]
    assert ref["diversity"] == pytest.approx(0.0, abs=1e-6)  # same cover for every user
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["methods"]["oracle"]["n_pairs"] == 12
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "cold start" in html and "Downstream model" in html


def test_choose_pairs_uses_no_truth(world: Path, tmp_path: Path):
    data = load_dataset(world, rejects_dir=tmp_path / "rejects")
    a = choose_pairs(data, 5, 2, seed=1)
    b = choose_pairs(data, 5, 2, seed=1)
    assert a.equals(b)
    cold_truth = set(Truth(world).users.query("cold_start").index)
    assert len(set(a["user_id"]) & cold_truth) == 1
    assert np.all(a.groupby("user_id").size() == 2)
