"""`evaluate_methods` on a tiny world: every column present, lift anchored, files written; the
evaluation config, method selection and pair selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from icg.data import load_dataset
from icg.evaluation.baselines import load_covers
from icg.evaluation.methods import METHODS, select_methods
from icg.evaluation.pairs import choose_pairs, read_pairs
from icg.evaluation.run import EvalConfig, evaluate_methods, sampling_note
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
    from icg.evaluation.personal import SwapControl

    # a swap "draw" that ignores the user: every pair's cover is the item's reference
    swap = SwapControl(truth, data, lambda p, partners: sources["reference"](p))
    metrics = evaluate_methods(
        data, pairs, sources, tmp_path / "eval", clip=tiny_clip(), truth=truth, swap=swap
    )
    ref, orc = metrics["methods"]["reference"], metrics["methods"]["oracle"]
    for key in (
        "fidelity_motif",
        "fidelity_palette",
        "true_aesthetic",
        "true_taste_match",
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
    # 3 warm users × 3 items; covers that ignore the user gain nothing
    assert saved["personal_gain"] == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 9}
    # every method's true CTR with its interval over the 12 pairs, for the report's chart
    for name, m in saved["methods"].items():
        ci = saved["intervals"][name]["true_ctr"]
        assert ci["n"] == 12 and ci["mean"] == pytest.approx(m["true_ctr"])
        assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
    html = (tmp_path / "eval" / "report.html").read_text()
    # it opens with the verdict: the only non-oracle method wins, the oracle is the headroom
    assert html.index("the platform's reference covers has the highest true CTR over 12") < (
        html.index("<h2>Metrics")
    )
    assert f"oracle (the truth's best cover) reaches {orc['true_ctr']:.3f}" in html
    assert "cold start" in html and "Downstream model" in html
    assert "Personal gain" in html and "true_<wbr>taste_<wbr>match" in html  # a metrics column


def test_vae_roundtrip_is_the_base_models_encode_decode_of_the_reference(world: Path, tmp_path):
    from diffusers import AutoencoderKL
    from model_fixtures import get_dummy_components

    from icg.evaluation.baselines import vae_roundtrip_source

    data = load_dataset(world, rejects_dir=tmp_path / "rejects")
    vae: AutoencoderKL = get_dummy_components()["vae"].eval()
    item = data.items["item_id"].iloc[0]
    pairs = choose_pairs(data, n_users=2, n_items=2, n_cold=0)
    pairs = pairs.assign(item_id=[item, item, *pairs["item_id"].iloc[2:]])
    covers = vae_roundtrip_source(data, vae, 32, batch_size=3)(pairs)
    assert covers.shape == (len(pairs), 32, 32, 3) and covers.dtype == np.uint8
    np.testing.assert_array_equal(covers[0], covers[1])  # one cover per item, whatever the user
    reference = load_covers([data.items.set_index("item_id").at[item, "image"]], 32)
    assert not np.array_equal(covers[0], reference[0])  # it went through the (random) VAE


def test_choose_pairs_uses_no_truth(world: Path, tmp_path: Path):
    data = load_dataset(world, rejects_dir=tmp_path / "rejects")
    a = choose_pairs(data, 5, 2, seed=1)
    b = choose_pairs(data, 5, 2, seed=1)
    assert a.equals(b)
    cold_truth = set(Truth(world).users.query("cold_start").index)
    assert len(set(a["user_id"]) & cold_truth) == 1
    assert np.all(a.groupby("user_id").size() == 2)


def test_read_pairs_names_missing_columns(tmp_path: Path):
    import pandas as pd

    pd.DataFrame({"user_id": [1, 2], "item_id": ["a", "b"], "x": [0, 0]}).to_parquet(
        tmp_path / "p.parquet"
    )
    pairs = read_pairs(tmp_path / "p.parquet")
    assert list(pairs.columns) == ["user_id", "item_id"] and pairs["user_id"].tolist() == ["1", "2"]
    pd.DataFrame({"user_id": ["u"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"missing columns \['item_id'\]"):
        read_pairs(tmp_path / "bad.parquet")


def test_eval_config_defaults_and_validation():
    cfg = EvalConfig()
    assert (cfg.n_users, cfg.n_items, cfg.num_inference_steps, cfg.candidates) == (8, 16, 10, 1)
    assert (cfg.guidance_scale, cfg.strength, cfg.prompt_guidance_scale) == (3.0, 1.0, 7.5)
    assert cfg.user_guidance == 1.0
    assert (cfg.clip, cfg.aesthetic, cfg.base, cfg.mllm) == (
        "zoo:clip",
        "zoo:aesthetic",
        None,
        None,
    )
    with pytest.raises(ValueError, match=r"methods: unknown \['best'\]"):
        EvalConfig(methods=["icg", "best"])
    for bad in (
        {"candidates": 0}, {"strength": 0.0}, {"strength": 1.5}, {"n_users": 0},
        {"user_guidance": -1.0},
    ):  # fmt: skip
        with pytest.raises(ValueError, match=next(iter(bad))):
            EvalConfig(**bad)
    with pytest.raises(ValueError, match="extra"):
        EvalConfig(guidance=3.0)


def test_sampling_note_says_how_icg_methods_draw():
    assert sampling_note(EvalConfig()) == (
        "ICG methods draw from pure noise with 10 steps, guidance 3.0 and user guidance 1.0; "
        "one draw per pair."
    )
    note = sampling_note(
        EvalConfig(strength=0.5, candidates=4, guidance_scale=3.0, user_guidance=2.0)
    )
    assert note.startswith("ICG methods draw from the reference cover at strength 0.5 with 10")
    assert "guidance 3.0 and user guidance 2.0" in note
    assert "best of 4 draws per pair under their run's reward" in note
    assert "(icg-aesthetic, icg-relevance, icg-preference) draw once" in note
    assert "icg-nouser-single are the first draw of icg and of icg-nouser" in note


def _adapter(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "icg_config.json").write_text("{}")


def test_select_methods_finds_adapters_and_names_missing_inputs(tmp_path: Path):
    run = tmp_path / "run"
    wanted, adapters = select_methods(run, None, truth=True, base=None)
    assert wanted == ["reference", "oracle"] and adapters == {}
    _adapter(run / "icg" / "adapter")
    _adapter(run / "icg-aesthetic")  # an adapter saved straight into the run folder
    wanted, adapters = select_methods(run, None, truth=False, base=None)
    assert wanted == [
        "reference", "vae-roundtrip", "prompt", "mllm-prompt", "icg-nouser", "icg-nouser-single",
        "icg-aesthetic", "icg-single", "icg",
    ]  # fmt: skip
    assert adapters["icg-nouser-single"] == adapters["icg-single"] == run / "icg" / "adapter"
    assert adapters["icg-nouser"] == run / "icg" / "adapter"
    assert adapters["icg-aesthetic"] == run / "icg-aesthetic"
    # asked-for methods come in METHODS order, whatever the order asked
    wanted, _ = select_methods(run, ["icg", "reference"], truth=False, base=None)
    assert wanted == ["reference", "icg"] and set(wanted) <= set(METHODS)
    with pytest.raises(FileNotFoundError, match=r"\['icg-preference', 'oracle'\]"):
        select_methods(run, ["oracle", "icg-preference"], truth=False, base=None)
    # the prompt baselines need a base model: an adapter's record or --base
    wanted, _ = select_methods(tmp_path / "none", ["prompt"], truth=False, base="zoo:sd")
    assert wanted == ["prompt"]
    # variant-select: the run's preference model and a click log
    with pytest.raises(FileNotFoundError, match="variant-select"):
        select_methods(run, ["variant-select"], truth=False, base=None)
    (run / "preference").mkdir()
    (run / "preference" / "config.json").write_text("{}")
    wanted, _ = select_methods(run, None, truth=False, base=None)
    assert wanted[:2] == ["reference", "variant-select"]
    wanted, _ = select_methods(run, None, truth=False, base=None, variants=False)
    assert "variant-select" not in wanted
