"""Stage A learns the user: user dropout, position-debiased click weights, a refiner that trains."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from align_fixtures import align_config, align_parts
from model_fixtures import hand_made_preference

from icg.data.testing import write_tiny_dataset
from icg.models.preference import PreferenceModel
from icg.training.align import AlignConfig, AlignRecipe
from icg.training.click_weights import (
    advantage_weights,
    click_advantages,
    ips_weights,
    item_variants,
    normalised_weights,
    preferred_variants,
)
from icg.training.common import dropped_rows, encode_images, step_generator


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_dataset(
        tmp_path_factory.mktemp("data"), n_items=3, n_users=3, n_impressions=12, dim=4
    )


_parts = align_parts


def _config(data_dir, out, **kw) -> AlignConfig:
    return align_config(data_dir, out, **{"checkpoint_every": 100, **kw})


def _users_seen_by_refiner(recipe: AlignRecipe, step: int) -> torch.Tensor:
    """The user rows ``(B, U)`` the refiner receives in ``compute_loss(step)``."""
    seen = []
    hook = recipe.icg.refiner.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    with torch.no_grad():
        recipe.compute_loss(step)
    hook.remove()
    return seen[0]


# ---- user dropout ----------------------------------------------------------------------------
def test_dropped_rows_follow_the_fraction():
    n = 20_000
    for fraction in (0.0, 0.2, 1.0):
        drop = dropped_rows(step_generator(0, 5), n, fraction)
        bound = 4 * (fraction * (1 - fraction) / n) ** 0.5  # 4 binomial standard deviations
        assert abs(drop.float().mean().item() - fraction) <= bound


def test_user_dropout_is_a_function_of_seed_and_step(data_dir, tmp_path):
    parts = _parts()
    recipe = AlignRecipe(_config(data_dir, tmp_path, user_dropout=0.5), **parts)
    recipe.setup()
    masks = {s: torch.isnan(_users_seen_by_refiner(recipe, s)).all(-1) for s in range(8)}
    assert torch.equal(torch.isnan(_users_seen_by_refiner(recipe, 7)).all(-1), masks[7])
    fraction = torch.stack(list(masks.values())).float().mean().item()
    assert abs(fraction - 0.5) <= 4 * (0.25 / (8 * 3)) ** 0.5, fraction  # 4 binomial sd
    # a NaN row is a whole row: no partially dropped users
    rows = _users_seen_by_refiner(recipe, 3)
    assert torch.equal(torch.isnan(rows).any(-1), torch.isnan(rows).all(-1))
    recipe.cleanup()

    other = AlignRecipe(_config(data_dir, tmp_path / "b", user_dropout=0.5, seed=1), **parts)
    other.setup()
    other_masks = [torch.isnan(_users_seen_by_refiner(other, s)).all(-1) for s in range(8)]
    assert any(not torch.equal(a, b) for a, b in zip(masks.values(), other_masks, strict=True))
    other.cleanup()


# ---- click weights ---------------------------------------------------------------------------
def test_ips_weights_make_deep_clicks_weigh_more():
    log_exam = torch.log(torch.tensor([1.0, 0.5, 0.25]))  # positions 0, 1, 2
    torch.testing.assert_close(ips_weights(log_exam, 10.0), torch.tensor([1.0, 2.0, 4.0]) / (7 / 3))
    # clipped at the max weight before normalising to mean 1
    torch.testing.assert_close(ips_weights(log_exam, 2.0), torch.tensor([0.6, 1.2, 1.2]))
    assert normalised_weights(torch.tensor([3.0, 5.0]), 10.0).mean() == 1.0


def test_advantage_weights_favour_the_variant_the_clicker_likes():
    model = hand_made_preference()
    red, blue = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    embeddings = {"red.png": red, "blue.png": blue}
    impressions = pd.DataFrame(
        {"item_id": ["i0", "i0", "i0"], "cover": ["red.png", "blue.png", "red.png"]}
    )
    variants = item_variants(impressions)
    assert variants == {"i0": ["blue.png", "red.png"]}
    clicks = pd.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "item_id": ["i0"] * 3,
            "cover": ["red.png", "blue.png"] * 1 + ["red.png"],
        }
    )
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # a likes red, b likes blue
    adv = click_advantages(model, clicks, variants, embeddings, users)
    half = F.gelu(torch.tensor(1.0)) / 2  # a(liked) = gelu(1), a(other) = 0, mean = gelu(1) / 2
    torch.testing.assert_close(adv, torch.stack([half, -half, -half]))
    w = advantage_weights(adv, torch.zeros(3), 10.0)
    assert w[0] > w[1] and w[0] > w[2]
    torch.testing.assert_close(w, normalised_weights(torch.exp(adv), 10.0))


def test_ips_weighting_reaches_the_recipe(data_dir, tmp_path):
    model = PreferenceModel(image_dim=2, num_positions=5)
    with torch.no_grad():
        model.position_theta.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    model.save_pretrained(tmp_path / "preference")
    with pytest.raises(ValueError, match="needs a trained preference model"):
        _config(data_dir, tmp_path / "x", click_weighting="ips")
    parts = _parts()
    recipe = AlignRecipe(
        _config(data_dir, tmp_path, click_weighting="ips", preference=tmp_path / "preference"),
        **parts,
    )
    recipe.setup()
    clicks = pd.read_parquet(data_dir / "impressions.parquet").query("clicked")
    clicks = clicks.sort_values(["timestamp", "event_id"])
    expected = ips_weights(model.log_examination(torch.tensor(clicks["position"].to_numpy())), 10)
    torch.testing.assert_close(recipe.data.weights, expected.detach())
    weighted = recipe.compute_loss(0).item()
    recipe.data.weights = None
    assert recipe.compute_loss(0).item() != pytest.approx(weighted, abs=1e-6)
    recipe.cleanup()


def test_preferred_variants_pick_each_users_favourite_cover():
    model = hand_made_preference()
    embeddings = {"red.png": torch.tensor([1.0, 0.0]), "blue.png": torch.tensor([0.0, 1.0])}
    variants = {"i0": ["blue.png", "red.png"], "i1": ["red.png"]}
    pairs = pd.DataFrame({"user_id": ["a", "b", "b"], "item_id": ["i0", "i0", "i1"]})
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # a likes red, b likes blue
    chosen = preferred_variants(model, pairs, variants, embeddings, users)
    assert chosen == ["red.png", "blue.png", "red.png"]  # i1 has one variant only


def test_preferred_targets_reach_the_recipe(data_dir, tmp_path, monkeypatch):
    """``targets="preferred"``: one example per shown (user, item) pair, each with the latent of
    the variant the preference model prefers for that user; no truth is read."""
    import icg.training.click_weights as cw
    from icg.data import load_dataset
    from icg.training.align_data import shown_pairs

    data = load_dataset(data_dir)
    impressions, items, users = data.impressions, data.items, data.users
    covers = sorted(set(impressions["cover"]))
    # the hand-made model's cover taste is the embedding: users differ in which half they like
    fake = {c: torch.tensor([float(k % 2), float(1 - k % 2)]) for k, c in enumerate(covers)}
    monkeypatch.setattr(cw, "_cover_embeddings", lambda model, pref, paths, towers: fake)
    hand_made_preference(user_dim=4).save_pretrained(tmp_path / "preference")
    with pytest.raises(ValueError, match="targets='preferred' needs a trained preference"):
        _config(data_dir, tmp_path / "x", targets="preferred")
    cfg = _config(data_dir, tmp_path, targets="preferred", preference=tmp_path / "preference")
    recipe = AlignRecipe(cfg, **_parts())
    recipe.setup()
    pairs = shown_pairs(impressions, items, users)
    assert recipe.data.user_ids == pairs["user_id"].tolist()
    assert recipe.data.item_ids == pairs["item_id"].tolist()
    assert recipe.data.weights is None
    chosen = cw.preferred_covers(tmp_path / "preference", pairs, impressions, users)
    assert len(set(chosen)) > 1 and set(chosen) <= set(covers)
    size = recipe.data.latents.shape[-1] * 2 ** (len(recipe.vae.config.block_out_channels) - 1)
    torch.testing.assert_close(recipe.data.latents, encode_images(recipe.vae, chosen, size))
    assert torch.isfinite(recipe.compute_loss(0))
    recipe.cleanup()


# ---- the refiner trains ----------------------------------------------------------------------
def test_training_signal_reaches_the_refiner_from_zero_init(data_dir, tmp_path):
    """Two zero inits in a row: the adapter's ``to_v_icg`` (so at step 0 nothing upstream of it
    gets gradient) and the refiner's FiLM output (so next only its gate does, then the rest)."""
    recipe = AlignRecipe(_config(data_dir, tmp_path, user_dropout=0.0, max_steps=1), **_parts())
    recipe.setup()
    refiner = recipe.icg.refiner
    film = refiner.film[1]
    assert film.weight.abs().sum() == 0  # adaLN-Zero: the refiner starts as the identity
    recipe.train()  # one step: only the adapter's to_v_icg moves
    recipe.optimizer.zero_grad(set_to_none=True)
    recipe.compute_loss(1).backward()
    d = film.weight.shape[0] // 3
    shift_scale, gate = film.weight.grad[: 2 * d], film.weight.grad[2 * d :]  # (3D, H) rows
    assert gate.abs().sum() > 0
    assert shift_scale.abs().sum() == 0 and refiner.user_proj.weight.grad.abs().sum() == 0
    recipe.optimizer.zero_grad(set_to_none=True)
    user_proj = refiner.user_proj.weight.detach().clone()
    recipe.config.max_steps = 3
    recipe.train()
    assert film.weight[2 * d :].abs().sum() > 0 and film.weight[: 2 * d].abs().sum() > 0
    assert not torch.equal(refiner.user_proj.weight, user_proj)  # reached through the gate
    assert recipe.user_effect is not None and recipe.user_effect > 0
    recipe.cleanup()


def test_without_the_refiner_the_user_reaches_only_the_words(data_dir, tmp_path):
    """``user_refiner: false`` (the words-only ablation): no refiner is built or saved, stage A
    trains, and the tokens are the same for every user; a model with neither a refiner nor words
    refuses users."""
    recipe = AlignRecipe(_config(data_dir, tmp_path, user_refiner=False, max_steps=2), **_parts())
    recipe.setup()
    model = recipe.icg
    assert model.refiner is None
    recipe.train()
    data = recipe.data
    items = sorted(data.titles)[:2]
    feats = model.encoder([data.titles[i] for i in items], [data.images[i] for i in items])
    users = torch.randn(2, 4)
    with pytest.raises(ValueError, match="no user refiner or user words"):
        model(feats, users)
    model.user_prompt = object()  # any words: the user may be given, and the tokens ignore it
    assert torch.equal(model(feats, users), model(feats))
    model.user_prompt = None
    saved = recipe.save_adapter()
    recipe.cleanup()
    assert (saved / "icg_config.json").is_file() and not (saved / "refiner").exists()
