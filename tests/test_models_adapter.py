"""CoverAdapter + decoupled cross-attention processors and the UserRefiner."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from model_fixtures import get_dummy_components, get_dummy_sdxl_components

from icg.models.adapter import CoverAdapter, cross_attention_layers
from icg.models.attention import ICG_TOKENS_KWARG, ICGAttnProcessor, PassthroughProcessor
from icg.models.user_refiner import UserRefiner

K, D = 3, 16


def _run(pipe, tokens=None, seed=0):
    kwargs = {"cross_attention_kwargs": {ICG_TOKENS_KWARG: tokens}} if tokens is not None else {}
    return pipe(
        ["red cat", "blue sea"],
        num_inference_steps=2,
        guidance_scale=5.0,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        **kwargs,
    ).images


def _pipe(kind: str):
    if kind == "sd15":
        pipe = StableDiffusionPipeline(**get_dummy_components())
    else:
        pipe = StableDiffusionXLPipeline(**get_dummy_sdxl_components(), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# the sdxl case took over 30 s on the shared 2-core machine (sd15: about 20 s)
@pytest.mark.parametrize("kind", ["sd15", pytest.param("sdxl", marks=pytest.mark.slow)])
def test_untrained_adapter_is_bit_exact_and_removable(kind):
    pipe = _pipe(kind)
    base = _run(pipe)
    originals = dict(pipe.unet.attn_processors)
    adapter = CoverAdapter.from_unet(pipe.unet, feature_dim=D, num_feature_tokens=K, num_tokens=4)
    adapter.install(pipe.unet)
    procs = pipe.unet.attn_processors
    assert all(isinstance(procs[n], ICGAttnProcessor) for n in adapter.config.layers)
    assert all(
        isinstance(p, PassthroughProcessor)
        for n, p in procs.items()
        if n not in adapter.config.layers
    )
    tokens = adapter(torch.randn(2, K, D))  # (2, 4, token_dim)
    assert tokens.shape == (2, 4, adapter.config.token_dim)
    cfg_tokens = torch.cat([torch.zeros_like(tokens), tokens])  # CFG doubles the batch
    with torch.no_grad():
        assert torch.equal(_run(pipe, cfg_tokens), base)
        # a trained (non-zero) branch changes the image; scale 0 switches it off exactly
        for layer in adapter.attn_layers.values():
            layer.to_v_icg.weight.normal_(std=1.0)
        assert not torch.equal(_run(pipe, cfg_tokens), base)
        adapter.set_scale(0.0)
        assert torch.equal(_run(pipe, cfg_tokens), base)
    adapter.remove(pipe.unet)
    restored = pipe.unet.attn_processors
    assert all(restored[n] is p for n, p in originals.items())
    assert not adapter.is_installed


@pytest.mark.slow  # several tiny-pipeline runs per UNet kind: over 30 s on the shared 2 cores
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_global_conditioning_reaches_the_timestep_embedding(kind, tmp_path):
    """Zero-initialised and bias-free: untrained, and for CFG's zero tokens, bit-exact; trained,
    the image changes with the tokens even where cross-attention is off; saved and removed."""
    pipe = _pipe(kind)
    base = _run(pipe)
    adapter = CoverAdapter.from_unet(
        pipe.unet, feature_dim=D, num_feature_tokens=K, global_conditioning=True
    )
    assert adapter.time_cond.out_features == pipe.unet.time_embedding.linear_2.out_features
    adapter.install(pipe.unet)
    tokens = adapter(torch.randn(2, K, D))
    cfg_tokens = torch.cat([torch.zeros_like(tokens), tokens])
    with torch.no_grad():
        assert torch.equal(_run(pipe, cfg_tokens), base)
        adapter.time_cond.weight.normal_(std=1.0)  # only the global branch is trained
        drawn = _run(pipe, cfg_tokens)
        assert not torch.equal(drawn, base)
        assert not torch.equal(_run(pipe, torch.cat([torch.zeros_like(tokens), -tokens])), drawn)
        assert torch.equal(_run(pipe, torch.zeros_like(cfg_tokens)), base)
        assert torch.equal(_run(pipe), base)  # no tokens passed: the base model
    adapter.save_pretrained(tmp_path)
    loaded = CoverAdapter.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.time_cond.weight, adapter.time_cond.weight)
    adapter.remove(pipe.unet)
    with torch.no_grad():
        assert torch.equal(_run(pipe, cfg_tokens), base)


def test_sdxl_blocks_of_different_width():
    unet = get_dummy_sdxl_components()["unet"]
    layers = cross_attention_layers(unet)
    assert len(set(layers.values())) == 1 or len(layers) > 1
    adapter = CoverAdapter.from_unet(unet, feature_dim=D, num_feature_tokens=K, token_dim=24)
    assert {k for k in adapter.config.layers} == set(layers)
    first = next(iter(adapter.attn_layers.values()))
    assert first.to_k_icg.in_features == 24


def test_install_rejects_other_unet():
    adapter = CoverAdapter.from_unet(
        get_dummy_components()["unet"], feature_dim=D, num_feature_tokens=K
    )
    with pytest.raises(ValueError, match="cross-attention layers do not match"):
        adapter.install(get_dummy_sdxl_components()["unet"])


def test_icg_tokens_batch_mismatch_is_explained():
    components = get_dummy_components()
    unet = components["unet"]
    adapter = CoverAdapter.from_unet(unet, feature_dim=D, num_feature_tokens=K)
    adapter.install(unet)
    with pytest.raises(ValueError, match="icg_tokens has batch 1, expected 2"):
        unet(
            torch.randn(2, 4, 8, 8),
            10,
            torch.randn(2, 5, 32),
            cross_attention_kwargs={ICG_TOKENS_KWARG: torch.randn(1, K, 32)},
        )


def test_refiner_cold_start_is_identity_bit_for_bit():
    refiner = UserRefiner(feature_dim=D, user_dim=5, hidden_dim=8)
    for p in refiner.film.parameters():  # pretend it is trained
        torch.nn.init.normal_(p)
    feats = torch.randn(3, K, D)
    assert refiner(feats) is feats
    users = torch.randn(3, 5)
    mask = torch.tensor([True, False, True])
    out = refiner(feats, user_embeddings=users, user_mask=mask)
    assert torch.equal(out[1], feats[1]) and not torch.equal(out[0], feats[0])
    users[2] = float("nan")  # a NaN row means "no embedding"
    out = refiner(feats, user_embeddings=users)
    assert torch.equal(out[2], feats[2])


def test_refiner_untrained_is_identity_and_validates_width():
    refiner = UserRefiner(feature_dim=D, user_dim=5)
    feats = torch.randn(2, K, D)
    assert torch.equal(refiner(feats, user_embeddings=torch.randn(2, 5)), feats)
    with pytest.raises(ValueError, match="expected width 5, got 7"):
        refiner(feats, user_embeddings=torch.randn(2, 7))
