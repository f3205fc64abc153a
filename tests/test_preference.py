"""The preference model: click likelihoods, position debiasing, save/load, differentiability."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from icg.models.preference import PreferenceModel, ips_loss, log1mexp, pbm_log_likelihood
from icg.training.click_log import ClickLog, PreferenceData, time_split
from icg.training.preference import PreferenceConfig, auc, fit_preference


def synthetic_clicks(seed: int = 0, n_users: int = 60, n_items: int = 120, pages: int = 6000):
    """A small position-biased platform whose truth we know.

    Covers have 3 style levels in 3 dims (dim 0 = brightness); users like a style; the legacy
    ranker puts bright covers on top, and examination decays as 1/(1+p): a naive learner
    confuses "bright" with "liked".
    """
    rng = np.random.default_rng(seed)
    n_var, s = 4, 3
    levels = rng.integers(0, 3, size=(n_items * n_var, s))  # (C, S)
    style = levels / 2.0
    onehot = np.eye(3)[levels].reshape(len(levels), -1)  # (C, 9)
    emb = np.concatenate([onehot, 0.3 * rng.normal(size=(len(levels), 7))], 1)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    taste = rng.integers(0, 3, size=(n_users, s)) / 2.0
    user_emb = np.concatenate([taste * 2 - 1, rng.normal(size=(n_users, 3))], 1) + 0.3 * rng.normal(
        size=(n_users, s + 3)
    )
    match = 1.0 - np.abs(style[None] - taste[:, None]).mean(-1)  # (U, C)
    page = 10
    users = rng.integers(n_users, size=pages)
    items = np.argsort(rng.random((pages, n_items)), axis=1)[:, :page]  # (P, page), no repeats
    var = rng.integers(n_var, size=items.shape)
    cover = items * n_var + var
    ranker = 2.5 * style[cover, 0] + rng.normal(0, 0.7, items.shape)
    order = np.argsort(-ranker, axis=1)
    cover = np.take_along_axis(cover, order, 1)
    items = np.take_along_axis(items, order, 1)
    pos = np.broadcast_to(np.arange(page), cover.shape)
    u = np.repeat(users, page)
    c, i, p = cover.ravel(), items.ravel(), pos.ravel()
    p_click = (1.0 + p) ** -1.0 / (1 + np.exp(-(-2.0 + 5.0 * (match[u, c] - 0.5) * 2)))
    clicked = rng.random(len(p_click)) < p_click
    log = ClickLog(
        user=torch.as_tensor(u),
        item=torch.as_tensor(i),
        cover=torch.as_tensor(c),
        position=torch.as_tensor(p.copy()),
        clicked=torch.as_tensor(clicked.astype(np.float32)),
        timestamp=torch.as_tensor(np.repeat(np.arange(pages), page)),
        event_id=np.array([f"e{k}" for k in range(len(u))]),
    )
    data = PreferenceData(
        log=log,
        cover_embeddings=torch.as_tensor(emb, dtype=torch.float32),
        user_ids=[f"u{k}" for k in range(n_users)],
        item_ids=[f"i{k}" for k in range(n_items)],
        user_embeddings=torch.as_tensor(user_emb, dtype=torch.float32),
    )
    return data, match, p_click


def taste_spearman(model: PreferenceModel, data: PreferenceData, match: np.ndarray) -> float:
    from icg.evaluation.preference_eval import _spearman_rows

    with torch.no_grad():
        z_c, appeal = model.image_features(data.cover_embeddings)
        z_u, _ = model.user_vector(
            len(data.user_ids), data.user_embeddings, model.user_index(data.user_ids)
        )
        scores = (z_u @ z_c.T + appeal[None]).numpy()
    return float(np.nanmean(_spearman_rows(scores, match)))


QUICK = dict(
    epochs=10, batch_size=2048, learning_rate=2e-2, rank=16, hidden_dim=32, val_fraction=0.2
)


@pytest.fixture(scope="module")
def synthetic():
    torch.set_num_threads(1)
    return synthetic_clicks()


def test_log1mexp_matches_naive():
    x = torch.tensor([-1e-5, -0.1, -0.7, -2.0, -30.0], dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), torch.log(1 - torch.exp(x)), rtol=1e-6, atol=1e-12)


def test_pbm_likelihood_is_bernoulli_of_exam_times_attractiveness():
    a = torch.tensor([0.3, -1.0])
    log_exam = torch.log(torch.tensor([1.0, 0.25]))
    p = torch.exp(log_exam) * torch.sigmoid(a)
    ll = pbm_log_likelihood(a, log_exam, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(ll, torch.stack([p[0].log(), (1 - p[1]).log()]))


def test_ips_loss_with_unit_propensity_is_bce():
    a, c = torch.tensor([0.5, -0.2, 1.0]), torch.tensor([1.0, 0.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(a, c, reduction="none")
    torch.testing.assert_close(ips_loss(a, c, torch.ones(3)), bce)
    # a click at a rarely examined position weighs more, but never more than 1/clip
    w = ips_loss(torch.zeros(1), torch.ones(1), torch.tensor([1e-4]), clip=0.1)
    torch.testing.assert_close(
        w, 10 * torch.log(torch.tensor([2.0])) - 9 * torch.log(torch.tensor([2.0]))
    )


def test_examination_is_one_at_the_top_and_positions_clamp():
    m = PreferenceModel(image_dim=4, num_positions=3)
    log_exam = m.log_examination(torch.tensor([0, 1, 2, 7]))
    assert log_exam[0] == 0
    assert (log_exam[1:] < 0).all()
    assert log_exam[3] == log_exam[2]


def test_time_split_puts_latest_events_in_validation():
    tr, va = time_split(torch.tensor([5, 1, 4, 2, 3]), 0.4)
    assert sorted(tr.tolist()) == [1, 3, 4] and sorted(va.tolist()) == [0, 2]


def test_debiased_model_ranks_taste_better_than_naive(synthetic):
    data, match, p_click = synthetic
    results, fits = {}, {}
    for mode in ("none", "pbm", "ips"):
        # IPS with the propensities the PBM fit estimated (as fit_preference does by default)
        prop = torch.tensor(fits["pbm"].metrics["examination"]) if mode == "ips" else None
        fits[mode] = fit_preference(data, PreferenceConfig(debias=mode, **QUICK), propensities=prop)
        results[mode] = (
            taste_spearman(fits[mode].model, data, match),
            fits[mode].metrics["val_auc"],
        )
    _, val_idx = time_split(data.log.timestamp, QUICK["val_fraction"])
    bayes = auc(p_click[val_idx.numpy()], data.log.clicked[val_idx].numpy())
    print(f"\nsynthetic: taste Spearman / val AUC  naive={results['none']}  pbm={results['pbm']}  "
          f"ips={results['ips']}  bayes AUC={bayes:.4f}")  # fmt: skip
    assert results["pbm"][0] > results["none"][0] + 0.05
    assert results["ips"][0] > results["none"][0] + 0.05
    assert results["pbm"][1] > results["none"][1]
    assert results["pbm"][1] > bayes - 0.04
    # the fitted examination follows the true 1/(1+p)
    exam = np.array(fits["pbm"].metrics["examination"])
    np.testing.assert_allclose(exam[:4], 1.0 / (1 + np.arange(4)), atol=0.12)


def test_save_load_roundtrip_and_image_gradients(tmp_path, synthetic):
    data, _, _ = synthetic
    fit = fit_preference(
        data, PreferenceConfig(epochs=1, **{k: v for k, v in QUICK.items() if k != "epochs"})
    )
    fit.model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    loaded = PreferenceModel.from_pretrained(tmp_path).eval()
    emb = data.cover_embeddings[:5].clone().requires_grad_(True)
    users = data.user_embeddings[:5]
    idx = loaded.user_index(["u0", "u1", "nobody", "u3", "u4"])
    assert idx[2] == -1
    a = loaded.attractiveness_logit(emb, users, idx)
    torch.testing.assert_close(a, fit.model.attractiveness_logit(emb, users, idx))
    a.sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    # cold start: no embedding, no history → the population mean taste, still differentiable
    cold = loaded.attractiveness_logit(emb, None, None)
    assert cold.shape == (5,) and torch.isfinite(cold).all()


def test_implicit_feedback_and_embedding_cache(tmp_path):
    """Implicit logs train with sampled negatives; covers are embedded once and then cached."""
    import pandas as pd

    from icg.data.testing import write_tiny_dataset
    from icg.rewards import clip as clip_mod
    from icg.rewards.testing import tiny_clip
    from icg.training.preference import CACHE_FILE, train_preference

    root = write_tiny_dataset(tmp_path / "d", n_items=6, n_users=4, n_impressions=12)
    (root / "impressions.parquet").unlink()
    rows = [
        (f"u{u}", f"i{(u + k) % 6}", 1_700_000_000 + 10 * k + u) for u in range(4) for k in range(3)
    ]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(
        root / "feedback.csv", index=False
    )
    towers = tiny_clip()
    cfg = PreferenceConfig(epochs=2, batch_size=16, rank=4, hidden_dim=8, negatives_per_positive=2)
    result = train_preference(root, tmp_path / "run", cfg, towers=towers)
    assert result.metrics["train_events"] + result.metrics["val_events"] == 12 * 3
    assert result.model.config.num_positions == 1  # no positions in implicit logs
    assert (tmp_path / "run" / CACHE_FILE).is_file()
    calls = []
    original = towers.image_embeds
    towers.image_embeds = lambda x: calls.append(len(x)) or original(x)
    again = clip_mod.embed_files(towers, result.data.cover_paths, tmp_path / "run" / CACHE_FILE)
    assert calls == []  # every cover came from the cache
    torch.testing.assert_close(again, result.data.cover_embeddings)
    first = Path(result.data.cover_paths[0])
    first.write_bytes(first.read_bytes())  # touch: new mtime → recomputed alone
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    clip_mod.embed_files(towers, result.data.cover_paths, tmp_path / "run" / CACHE_FILE)
    assert calls == [1]


def test_save_preference_puts_the_config_last_and_leaves_no_temporary(
    tmp_path, synthetic, monkeypatch
):
    """``config.json`` marks a finished model: it is renamed into place after the weights."""
    import os

    import icg.training.preference as tp

    data, _, _ = synthetic
    fit = fit_preference(
        data, PreferenceConfig(epochs=1, **{k: v for k, v in QUICK.items() if k != "epochs"})
    )
    moved = []
    real = os.replace
    monkeypatch.setattr(tp.os, "replace", lambda a, b: moved.append(Path(b).name) or real(a, b))
    tp.save_preference(fit, tmp_path, PreferenceConfig())
    assert moved[-1] == "config.json" and "diffusion_pytorch_model.safetensors" in moved
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    PreferenceModel.from_pretrained(tmp_path)


def test_two_fits_on_two_threads_give_the_same_weights(synthetic):
    """Same seed, same data, same bits: the multi-threaded backward of the cover gather adds in
    thread order unless `seed_everything` picks the deterministic kernels."""
    data, _, _ = synthetic
    cfg = PreferenceConfig(**{**QUICK, "epochs": 2, "batch_size": 8192})
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fits = [fit_preference(data, cfg).model.state_dict() for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    for name, value in fits[0].items():
        assert torch.equal(value, fits[1][name]), name
