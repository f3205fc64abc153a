"""On CoverWorld: the debiased model ranks covers by each user's TRUE taste match better than a
naive one, and its validation AUC approaches the Bayes-optimal AUC (evaluation reads truth/)."""

from __future__ import annotations

import pytest
import torch

from icg.evaluation.preference_eval import bayes_auc, evaluate_preference_run, has_truth
from icg.rewards.clip import ClipTowers
from icg.training.preference import PreferenceConfig, fit_preference, load_preference_data


def _zoo_clip() -> ClipTowers:
    try:
        return ClipTowers.from_pretrained("zoo:clip")
    except (FileNotFoundError, KeyError, OSError, ValueError) as err:
        pytest.skip(f"needs the shipped zoo:clip (a random CLIP cannot see style): {err}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from icg.world.config import WorldConfig
    from icg.world.generate import generate_world

    try:
        from icg.world.oracle import ORACLE_DIR

        if not any(ORACLE_DIR.glob("*.safetensors")):
            pytest.skip("the CoverWorld oracle is not trained")
    except ImportError as err:
        pytest.skip(f"CoverWorld unavailable: {err}")
    root = tmp_path_factory.mktemp("prefworld") / "w"
    return generate_world(root, WorldConfig(n_items=120, n_users=60, n_impressions=30000, seed=3))


def test_debiased_beats_naive_on_coverworld(world):
    torch.set_num_threads(1)
    towers = _zoo_clip()
    assert has_truth(world)
    cfg = PreferenceConfig(epochs=10, rank=16, hidden_dim=64)
    data = load_preference_data(
        world, cfg, towers=towers, cache_file=world.parent / "cache.safetensors"
    )
    report = {}
    for mode in ("none", "pbm"):
        fit = fit_preference(data, cfg.model_copy(update={"debias": mode}))
        report[mode] = evaluate_preference_run(world, fit, data)
    print(f"\nCoverWorld taste ranking: naive={report['none']}\n  pbm={report['pbm']}")
    assert report["pbm"]["taste_spearman"] > report["none"]["taste_spearman"] + 0.02
    assert report["pbm"]["val_auc"] > report["none"]["val_auc"]
    assert report["pbm"]["val_auc"] > report["pbm"]["bayes_auc"] - 0.05


def test_bayes_auc_of_truth_is_the_truth(world):
    """The Bayes AUC is the AUC of truth p_click, and reading it needs truth/ (evaluation only)."""
    import numpy as np
    import pandas as pd

    imp = pd.read_parquet(world / "impressions.parquet").head(5000)
    value = bayes_auc(world, imp["event_id"], imp["clicked"])
    assert 0.5 < value < 1.0
    with pytest.raises(KeyError):
        bayes_auc(world, np.array(["nope"]), np.array([True]))
