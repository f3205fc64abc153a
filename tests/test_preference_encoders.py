"""The preference model's cover encoders: what they read, gradients to the pixels, save/load,
old configs, and a tiny world where taste lives in a texture the embedding does not carry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icg.models.preference import PreferenceModel, power_spectrum_bins
from icg.rewards.cover_inputs import CoverInputs
from icg.rewards.preference import PreferenceReward
from icg.rewards.testing import tiny_clip
from icg.training.click_log import ClickLog, PreferenceData, input_layout
from icg.training.preference import PreferenceConfig, fit_preference


@pytest.fixture(scope="module")
def towers():
    torch.manual_seed(0)
    return tiny_clip(image_size=32)


def _model(inputs: CoverInputs, user_dim: int = 4) -> PreferenceModel:
    torch.manual_seed(0)
    layout = input_layout(inputs)
    model = PreferenceModel(**layout, user_dim=user_dim, rank=4, hidden_dim=8, encoder_width=4)
    with torch.no_grad():
        model.user_proj.weight.normal_()
    return model.eval()


@pytest.mark.parametrize("encoder", ["clip", "conv", "patches", "spectrum"])
def test_cover_inputs_have_the_width_the_model_reads(towers, encoder):
    inputs = CoverInputs(towers, encoder, pixel_size=16, bands=4, orientations=2)
    model = _model(inputs)
    images = torch.rand(3, 3, 40, 40)
    x = inputs.image_embeds(images)
    tokens, width = inputs.patch_shape
    extra = {"clip": 0, "conv": 3 * 16 * 16, "patches": tokens * width, "spectrum": 8}[encoder]
    assert x.shape == (3, towers.embed_dim + extra) == (3, model.input_dim)
    # the CLIP embedding comes first, whatever follows
    torch.testing.assert_close(x[:, : towers.embed_dim], towers.image_embeds(images))
    taste, appeal = model.image_features(x)
    assert taste.shape == (3, 4) and appeal.shape == (3,)
    with pytest.raises(ValueError, match="image_embeds: expected width"):
        model.image_features(x[:, :-1])


@pytest.mark.parametrize("encoder", ["conv", "patches", "spectrum"])
def test_reward_gradient_reaches_the_pixels(towers, encoder):
    model = _model(CoverInputs(towers, encoder, pixel_size=16))
    reward = PreferenceReward(model, towers)
    assert reward.clip.cover_encoder == encoder
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    scores, info = reward(images, ["a", "b"], torch.randn(2, 4))
    assert scores.shape == (2,) and set(info) == {"preference_probability"}
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # the pixels reach the scores through the cover encoder too, not only through CLIP
    x = reward.clip.image_embeds(images.detach()).requires_grad_(True)
    model.attractiveness_logit(x).sum().backward()
    assert x.grad[:, towers.embed_dim :].abs().sum() > 0


@pytest.mark.parametrize("encoder", ["conv", "patches", "spectrum"])
def test_save_load_roundtrip_keeps_the_encoder(tmp_path, towers, encoder):
    inputs = CoverInputs(towers, encoder, pixel_size=16, patch_layer=1, bands=3, orientations=2)
    model = _model(inputs)
    model.set_extra_normalisation(inputs.image_embeds(torch.rand(5, 3, 32, 32)))
    model.save_pretrained(tmp_path)
    loaded = PreferenceModel.from_pretrained(tmp_path).eval()
    assert loaded.config.cover_encoder == encoder and loaded.input_dim == model.input_dim
    x = inputs.image_embeds(torch.rand(2, 3, 32, 32))
    torch.testing.assert_close(loaded.attractiveness_logit(x), model.attractiveness_logit(x))
    again = CoverInputs.for_model(towers, loaded.config)
    assert (again.cover_encoder, again.pixel_size, again.patch_layer) == (encoder, 16, 1)
    assert (again.bands, again.orientations) == (3, 2)
    torch.testing.assert_close(again.image_embeds(x.new_ones(1, 3, 32, 32)),
                               inputs.image_embeds(x.new_ones(1, 3, 32, 32)))  # fmt: skip


def test_an_old_config_without_encoder_fields_loads_as_clip(tmp_path, towers):
    model = _model(CoverInputs(towers, "clip"))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("cover_encoder", "pixel_size", "patch_tokens", "patch_dim", "patch_layer",
                "encoder_width", "spectrum_bands", "spectrum_orientations"):  # fmt: skip
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = PreferenceModel.from_pretrained(tmp_path).eval()
    assert loaded.config.cover_encoder == "clip" and loaded.cover_net is None
    reward = PreferenceReward(loaded, towers)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(reward.clip.image_embeds(images), towers.image_embeds(images))
    assert reward.clip.fingerprint() == towers.fingerprint()  # old embedding caches stay valid
    emb = towers.image_embeds(images)
    torch.testing.assert_close(loaded.attractiveness_logit(emb), model.attractiveness_logit(emb))


# ---- a tiny world whose taste is partly a texture --------------------------------------------
def texture_world(seed: int = 0, n_users: int = 40, n_items: int = 60, pages: int = 8000):
    """Covers with brightness, hue and texture levels; users like a style in all three. The
    "embedding" carries brightness and hue only (as a pooled CLIP that misses texture); the
    16-px pixels, and so their power spectrum, carry the texture."""
    rng = np.random.default_rng(seed)
    n_var, size = 4, 16
    levels = rng.integers(0, 3, size=(n_items * n_var, 3))  # (C, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    patterns = [
        np.zeros((size, size)),
        0.25 * np.sin(2 * np.pi * 4 * (xx + yy)),  # stripes
        0.25 * np.cos(2 * np.pi * 4 * xx) * np.cos(2 * np.pi * 4 * yy),  # dots
    ]
    tint = np.array([[1.0, 0.6, 0.6], [0.6, 1.0, 0.6], [0.6, 0.6, 1.0]])
    value = 0.3 + 0.2 * levels[:, 0, None, None] + np.stack([patterns[t] for t in levels[:, 2]])
    pixels = np.clip(value[:, None] * tint[levels[:, 1]][:, :, None, None], 0, 1)  # (C,3,s,s)
    onehot = np.eye(3)[levels[:, :2]].reshape(len(levels), -1)  # (C, 6)
    emb = np.concatenate([onehot, 0.3 * rng.normal(size=(len(levels), 4))], 1)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    taste = rng.integers(0, 3, size=(n_users, 3))
    match = (levels[None] == taste[:, None]).mean(-1)  # (U, C)
    users = rng.integers(n_users, size=pages)
    items = np.argsort(rng.random((pages, n_items)), axis=1)[:, :10]  # (P, 10)
    cover = items * n_var + rng.integers(n_var, size=items.shape)
    u, c = np.repeat(users, 10), cover.ravel()
    p = np.tile(np.arange(10), pages)
    p_click = (1.0 + p) ** -1.0 / (1 + np.exp(-(-2.0 + 4.0 * (match[u, c] - 0.5) * 2)))
    log = ClickLog(
        user=torch.as_tensor(u),
        item=torch.as_tensor(items.ravel()),
        cover=torch.as_tensor(c),
        position=torch.as_tensor(p),
        clicked=torch.as_tensor((rng.random(len(u)) < p_click).astype(np.float32)),
        timestamp=torch.as_tensor(np.repeat(np.arange(pages), 10)),
    )
    emb_t = torch.as_tensor(emb, dtype=torch.float32)
    pix_t = torch.as_tensor(pixels, dtype=torch.float32).flatten(1)

    spectrum = power_spectrum_bins(pix_t.view(-1, 3, size, size), 4, 4)  # (C, 16)

    def data(encoder: str) -> PreferenceData:
        layout, inputs = None, emb_t
        if encoder == "conv":
            layout = {"cover_encoder": "conv", "image_dim": emb.shape[1], "pixel_size": size}
            inputs = torch.cat([emb_t, pix_t], 1)
        elif encoder == "spectrum":
            layout = {"cover_encoder": "spectrum", "image_dim": emb.shape[1], "pixel_size": size,
                      "spectrum_bands": 4, "spectrum_orientations": 4}  # fmt: skip
            inputs = torch.cat([emb_t, spectrum], 1)
        return PreferenceData(
            log=log,
            cover_embeddings=inputs,
            user_ids=[f"u{k}" for k in range(n_users)],
            item_ids=[f"i{k}" for k in range(n_items)],
            input_layout=layout,
        )

    return data, match


def test_spectrum_encoder_beats_the_embedding_alone_when_taste_is_a_texture():
    torch.set_num_threads(1)
    make, _ = texture_world(pages=8000)
    cfg = PreferenceConfig(epochs=6, batch_size=512, rank=8, hidden_dim=32, val_fraction=0.2,
                           encoder_width=8)  # fmt: skip
    fits = {enc: fit_preference(make(enc), cfg) for enc in ("clip", "spectrum")}
    assert fits["spectrum"].model.config.cover_encoder == "spectrum"
    assert fits["clip"].model.config.cover_encoder == "clip"
    auc = {enc: fit.metrics["val_auc"] for enc, fit in fits.items()}
    assert auc["spectrum"] > auc["clip"] + 0.01, auc


def test_conv_encoder_trains_on_pixels_and_reports_its_auc():
    """The jointly trained CNN fits end to end (its weights move) on the same tiny world."""
    torch.set_num_threads(1)
    make, _ = texture_world(pages=600)
    cfg = PreferenceConfig(epochs=2, batch_size=512, rank=4, hidden_dim=8, val_fraction=0.2,
                           encoder_width=4)  # fmt: skip
    torch.manual_seed(0)
    first = PreferenceModel(image_dim=10, cover_encoder="conv", pixel_size=16, encoder_width=4)
    fit = fit_preference(make("conv"), cfg)
    assert fit.model.config.cover_encoder == "conv" and 0.5 < fit.metrics["val_auc"] <= 1.0
    before = first.cover_net.layers[0].weight
    assert not torch.allclose(fit.model.cover_net.layers[0].weight, before)


def test_train_preference_saves_an_encoder_the_reward_rebuilds(tmp_path, towers):
    """The data folder → cache → fit → save → reward path with a non-CLIP-only encoder."""
    from icg.data.testing import write_tiny_dataset
    from icg.training.preference import CACHE_FILE, train_preference

    root = write_tiny_dataset(tmp_path / "d", n_items=6, n_users=4, n_impressions=60)
    cfg = PreferenceConfig(epochs=1, batch_size=32, rank=4, hidden_dim=8, cover_encoder="spectrum",
                           pixel_size=16, spectrum_bins=(3, 2), encoder_width=4)  # fmt: skip
    result = train_preference(root, tmp_path / "run", cfg, towers=towers)
    assert result.data.cover_embeddings.shape[1] == towers.embed_dim + 6
    assert (tmp_path / "run" / CACHE_FILE).is_file()
    reward = PreferenceReward(tmp_path / "run", towers)
    assert reward.model.config.cover_encoder == "spectrum"
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    scores, _ = reward(images, ["a", "b"], None)
    scores.sum().backward()
    assert torch.isfinite(scores).all() and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="spectrum_bins"):
        CoverInputs(towers, "spectrum", bands=0)
