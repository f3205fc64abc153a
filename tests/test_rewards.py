"""Rewards: the contract, gradients into the image only, hand-made cases, MultiReward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icg.models.preference import PreferenceModel
from icg.rewards import (
    AestheticReward,
    ClipPreprocess,
    MultiReward,
    PreferenceReward,
    RelevanceReward,
    available_rewards,
    build_reward,
    clip_preprocess,
    clip_score,
    load_aesthetic_predictor,
    merge_moments,
    parse_weights,
    standardise,
)
from icg.rewards.testing import tiny_clip


@pytest.fixture(scope="module")
def clip():
    torch.set_num_threads(1)
    return tiny_clip(image_size=32, projection_dim=16)


def _laion_state(input_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(1024, input_size), (128, 1024), (64, 128), (16, 64), (1, 16)]
    keys = [0, 2, 4, 6, 7]
    state = {}
    for k, (o, i) in zip(keys, sizes, strict=True):
        state[f"layers.{k}.weight"] = torch.randn(o, i, generator=g) / i**0.5
        state[f"layers.{k}.bias"] = torch.randn(o, generator=g) * 0.01
    return state


def _pref_model(image_dim: int = 16, user_dim: int = 4) -> PreferenceModel:
    torch.manual_seed(0)
    m = PreferenceModel(image_dim=image_dim, user_dim=user_dim, rank=4, hidden_dim=8)
    with torch.no_grad():
        m.user_proj.weight.normal_()
    return m.eval()


def _rewards(clip) -> dict:
    predictor = load_aesthetic_predictor_from_state(_laion_state(16))
    return {
        "aesthetic": AestheticReward(clip, predictor),
        "relevance": RelevanceReward(clip),
        "preference": PreferenceReward(_pref_model(), clip),
    }


def load_aesthetic_predictor_from_state(state):
    from icg.zoo.aesthetic import AestheticMLP

    return AestheticMLP.from_laion(state)


def test_registry_knows_the_three_rewards():
    assert {"aesthetic", "relevance", "preference"} <= set(available_rewards())
    with pytest.raises(KeyError, match="unknown"):
        build_reward("nope")


def test_contract_shapes_and_gradients_into_the_image_only(clip):
    images = torch.rand(3, 3, 24, 24, requires_grad=True)
    titles = ["a red circle", "a blue star", "old tale"]
    users = torch.randn(3, 4)
    for name, reward in _rewards(clip).items():
        images.grad = None
        r, info = reward(images, titles, users if name == "preference" else None)
        assert r.shape == (3,), name
        assert all(v.shape == (3,) for v in info.values()), name
        r.sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0, name
        assert all(p.grad is None and not p.requires_grad for p in reward.parameters()), name
        assert not reward.training
        reward.train()
        assert not reward.training, f"{name}: reward models stay in eval mode"


def test_contract_validates_inputs(clip):
    reward = RelevanceReward(clip)
    with pytest.raises(ValueError, match="titles"):
        reward(torch.rand(2, 3, 8, 8), ["one"])
    with pytest.raises(ValueError, match="images"):
        reward(torch.rand(2, 8, 8), ["a", "b"])


def test_clip_preprocess_matches_the_image_processor_at_native_size():
    from PIL import Image
    from transformers import CLIPImageProcessor

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ref = torch.as_tensor(np.asarray(proc(images=Image.fromarray(arr))["pixel_values"][0]))
    pre = ClipPreprocess.from_image_processor(proc)
    ours = clip_preprocess(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255, pre)[0]
    torch.testing.assert_close(ours, ref.float(), atol=1e-5, rtol=1e-5)
    # a larger image is resized and centre-cropped to the crop size, differentiably
    x = torch.rand(2, 3, 48, 64, requires_grad=True)
    out = clip_preprocess(x, pre)
    assert out.shape == (2, 3, 32, 32)
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_laion_layout_loads_from_safetensors_and_a_pickle_is_refused(tmp_path):
    from safetensors.torch import save_file

    from icg.artifacts import ArtifactError

    state = _laion_state(16)
    torch.save(state, tmp_path / "laion.pth")
    save_file(state, str(tmp_path / "laion.safetensors"))
    ref = torch.nn.Sequential(
        torch.nn.Linear(16, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16), torch.nn.Linear(16, 1),
    ).eval()  # fmt: skip
    ref.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
    x = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    mlp = load_aesthetic_predictor(tmp_path / "laion.safetensors").eval()
    torch.testing.assert_close(mlp(x), ref(x))
    with pytest.raises(ArtifactError, match="aesthetic predictor .*laion.pth.*safetensors"):
        load_aesthetic_predictor(tmp_path / "laion.pth")


def test_clip_score_scales():
    cos = torch.tensor([-0.2, 0.0, 0.3])
    torch.testing.assert_close(clip_score(cos, "cosine"), cos)
    torch.testing.assert_close(clip_score(cos, "clipscore"), torch.tensor([0.0, 0.0, 30.0]))
    with pytest.raises(ValueError):
        clip_score(cos, "nope")


def test_preference_reward_is_personal_and_cold_start_is_the_mean(clip):
    reward = PreferenceReward(_pref_model(), clip)
    images = torch.rand(2, 3, 32, 32)
    u = torch.randn(1, 4).expand(2, -1)
    r_u, _ = reward(images, ["t", "t"], u)
    r_neg, _ = reward(images, ["t", "t"], -u)
    r_cold, _ = reward(images, ["t", "t"], None)
    r_nan, _ = reward(images, ["t", "t"], torch.full((2, 4), float("nan")))
    torch.testing.assert_close(r_cold, r_nan)
    # the taste term is linear in the (standardised) embedding: u and -u sit either side of cold
    torch.testing.assert_close(r_u - r_cold, -(r_neg - r_cold), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(r_u, r_neg)
    # examination is factored out: the reward is the attractiveness logit, for any position
    emb = reward.clip.image_embeds(images)
    out = reward.model(emb, u, position=torch.tensor([0, 5]))
    torch.testing.assert_close(r_u, out["attractiveness_logit"])


def test_preference_reward_rejects_a_different_clip(clip):
    with pytest.raises(ValueError, match="expects 8"):
        PreferenceReward(_pref_model(image_dim=8), clip)


def test_merge_moments_equals_the_concatenation():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, generator=g) * 3 + 1 for n in (1, 7, 4, 20)]
    mean, var, count = (
        torch.zeros((), dtype=torch.float64),
        torch.zeros((), dtype=torch.float64),
        torch.zeros((), dtype=torch.float64),
    )
    for c in chunks:
        mean, var, count = merge_moments(mean, var, count, c)
    full = torch.cat(chunks).double()
    torch.testing.assert_close(mean, full.mean())
    torch.testing.assert_close(var, full.var(unbiased=False))
    assert count == len(full)


def test_standardise_and_parse_weights():
    x = torch.tensor([1.0, 3.0], requires_grad=True)
    y = standardise(x, torch.tensor(2.0), torch.tensor(4.0), eps=0.0)
    torch.testing.assert_close(y, torch.tensor([-0.5, 0.5]))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.5, 0.5]))
    assert parse_weights("aesthetic=1, relevance=0.5") == {"aesthetic": 1.0, "relevance": 0.5}
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        parse_weights("aesthetic")
    with pytest.raises(ValueError, match="number"):
        parse_weights("aesthetic=high")


def test_multireward_normalises_in_training_only_and_saves_stats(clip, tmp_path):
    multi = MultiReward(
        _rewards(clip), weights={"aesthetic": 1.0, "relevance": 2.0, "preference": 0.5}
    )
    images = torch.rand(4, 3, 32, 32, requires_grad=True)
    titles = ["a red circle"] * 4
    users = torch.randn(4, 4)
    multi.eval()
    multi(images, titles, users)
    assert all(s.count == 0 for s in multi.stats.values()), "no update outside training"
    multi.train()
    assert all(not r.training for r in multi.rewards.values())
    total, info = multi(images, titles, users)
    assert all(s.count == 4 for s in multi.stats.values())
    expected = sum(
        w * standardise(info[n], multi.stats[n].mean, multi.stats[n].var, multi.eps)
        for n, w in multi.weights.items()
    )
    torch.testing.assert_close(total, expected.float())
    total.sum().backward()
    assert images.grad.abs().sum() > 0
    multi.save_stats(tmp_path / "stats.safetensors")
    other = MultiReward(_rewards(clip))
    other.load_stats(tmp_path / "stats.safetensors")
    for n in multi.stats:
        torch.testing.assert_close(other.stats[n].mean, multi.stats[n].mean)
    with pytest.raises(ValueError, match="unknown"):
        MultiReward(_rewards(clip), weights={"beauty": 1.0})


def _zoo(name: str):
    """The shipped zoo model's folder; it ships with the package, so a missing one fails."""
    from icg.rewards.clip import resolve_name

    return resolve_name(f"zoo:{name}")


def test_relevance_prefers_the_matching_title_with_the_zoo_clip():
    _zoo("clip")
    from icg.world.attributes import MOTIFS, PALETTES, CoverSpec
    from icg.world.render import render

    reward = build_reward("relevance", clip="zoo:clip")
    wins = 0
    pairs = [(0, 0), (6, 5), (2, 3), (7, 6)]
    for motif, palette in pairs:
        img = (
            torch.from_numpy(render(CoverSpec(motif, palette, (1,) * 6), 64)).permute(2, 0, 1)[None]
            / 255
        )
        other = (motif + 3) % len(MOTIFS), (palette + 4) % len(PALETTES)
        match, _ = reward(img, [f"a {PALETTES[palette]} {MOTIFS[motif]}"])
        wrong, _ = reward(img, [f"a {PALETTES[other[1]]} {MOTIFS[other[0]]}"])
        wins += int(match > wrong)
    assert wins == len(pairs)


def test_aesthetic_prefers_a_clean_cover_with_the_zoo_models():
    _zoo("clip")
    _zoo("aesthetic")
    from icg.world.attributes import CoverSpec
    from icg.world.render import render

    reward = build_reward("aesthetic", clip="zoo:clip", predictor="zoo:aesthetic")
    clean = torch.from_numpy(render(CoverSpec(0, 0, (1,) * 6), 64)).permute(2, 0, 1)[None] / 255
    g = torch.Generator().manual_seed(0)
    noisy = (clean + 0.25 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    r, _ = reward(torch.cat([clean, noisy]), ["t", "t"])
    assert r[0] > r[1]
