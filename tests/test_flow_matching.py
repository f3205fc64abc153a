"""The flow-matching objective on SD3 / FLUX (tiny random transformers, CPU): pure pieces, and
one optimizer step on it changes exactly the adapter."""

from __future__ import annotations

import pytest
import torch
from backbone_fixtures import tiny_flux_transformer, tiny_sd3_transformer
from diffusers import FluxPipeline

from icg.models.backbones import build_adapter
from icg.training.flow import (
    flow_matching_loss,
    flow_noised,
    flow_target,
    flux_image_ids,
    logit_normal_sigmas,
    pack_latents,
    sample_flow,
    unpack_latents,
)


def test_the_pure_pieces_match_the_paper_and_diffusers():
    g = torch.Generator().manual_seed(0)
    sigmas = logit_normal_sigmas(1000, g)
    assert ((sigmas > 0) & (sigmas < 1)).all() and abs(float(sigmas.median()) - 0.5) < 0.05
    assert torch.equal(sigmas[:4], logit_normal_sigmas(1000, torch.Generator().manual_seed(0))[:4])
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(flow_noised(x0, eps, torch.tensor([0.0, 1.0]))[0], x0[0])
    assert torch.equal(flow_noised(x0, eps, torch.tensor([0.0, 1.0]))[1], eps[1])
    # the velocity moves x_t from the data (sigma 0) to the noise (sigma 1)
    torch.testing.assert_close(
        flow_noised(x0, eps, torch.full((2,), 0.5)) + 0.5 * flow_target(x0, eps), eps
    )
    packed = pack_latents(x0)  # (2, 16, 16)
    assert packed.shape == (2, 16, 16)
    assert torch.equal(packed, FluxPipeline._pack_latents(x0, 2, 4, 8, 8))
    assert torch.equal(unpack_latents(packed, 8, 8), x0)
    assert torch.equal(
        flux_image_ids(8, 8), FluxPipeline._prepare_latent_image_ids(2, 4, 4, "cpu", torch.float32)
    )


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_one_flow_matching_step_changes_the_adapter_and_nothing_else(family):
    transformer = (tiny_sd3_transformer if family == "sd3" else tiny_flux_transformer)()
    transformer.requires_grad_(False)
    frozen = {k: v.clone() for k, v in transformer.state_dict().items()}
    torch.manual_seed(0)
    adapter = build_adapter(
        transformer, feature_dim=16, num_feature_tokens=3, global_conditioning=True
    )
    adapter.install(transformer)
    before = {k: v.clone() for k, v in adapter.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    pooled_dim = transformer.config.pooled_projection_dim
    shape = (2, 4 if family == "sd3" else 1, 8, 8)  # FLUX packs 2x2 patches of 1 channel into 4
    latents, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    text, pooled = torch.randn(2, 5, 32, generator=g), torch.randn(2, pooled_dim, generator=g)
    sigmas = logit_normal_sigmas(2, g)
    features = torch.randn(2, 3, 16, generator=g)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1e-2)
    loss = flow_matching_loss(transformer, latents, noise, sigmas, text, pooled, adapter(features))
    with torch.no_grad():  # untrained: the base transformer's loss, to the bit
        adapter.remove(transformer)
        base_loss = flow_matching_loss(
            transformer, latents, noise, sigmas, text, pooled, adapter(features)
        )
        adapter.install(transformer)
    assert torch.isfinite(loss) and torch.equal(loss.detach(), base_loss)
    loss.backward()
    optimizer.step()
    after = adapter.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert {k for k in changed if "to_v_icg" in k}, "the zero-initialised values learned nothing"
    assert "time_cond.weight" in changed
    assert all(torch.equal(transformer.state_dict()[k], v) for k, v in frozen.items())
    adapter.remove(transformer)


def _trained_sd3_pipeline():
    from backbone_fixtures import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline()
    torch.manual_seed(0)
    adapter = build_adapter(pipe.transformer, feature_dim=16, num_feature_tokens=3)
    with torch.no_grad():
        for layer in adapter.attn_layers.values():
            layer.to_v_icg.weight.normal_()
    adapter.install(pipe.transformer)
    tokens = adapter(torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(1)))
    embeds = pipe.encode_prompt(
        prompt=["red cat", "blue sea"], prompt_2=None, prompt_3=None, max_sequence_length=8
    )  # (text, uncond text, pooled, uncond pooled)
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    return pipe, adapter, tokens.detach(), embeds, noise


def test_the_flow_sampler_is_the_sd3_pipelines_loop_with_icg_tokens():
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe, _, tokens, (text, uncond, pooled, uncond_pooled), noise = _trained_sd3_pipeline()
    expected = pipe(
        prompt_embeds=text, negative_prompt_embeds=uncond, pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=uncond_pooled, latents=noise, num_inference_steps=3,
        guidance_scale=5.0, output_type="latent",
        joint_attention_kwargs={"icg_tokens": torch.cat([torch.zeros_like(tokens), tokens])},
    ).images  # fmt: skip
    with torch.no_grad():
        out = sample_flow(
            pipe.transformer, FlowMatchEulerDiscreteScheduler(), noise, text, pooled, tokens, 3,
            guidance_scale=5.0, uncond_states=uncond, uncond_pooled=uncond_pooled,
        )  # fmt: skip
    assert torch.equal(out, expected)


def test_only_the_last_k_flow_steps_carry_gradients_to_the_adapter():
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe, adapter, _, (text, _, pooled, _), noise = _trained_sd3_pipeline()
    pipe.transformer.requires_grad_(False)
    features = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(1))
    scheduler = FlowMatchEulerDiscreteScheduler()
    frozen = sample_flow(pipe.transformer, scheduler, noise, text, pooled, adapter(features), 3)
    assert not frozen.requires_grad  # K = 0: no graph at all
    out = sample_flow(
        pipe.transformer, scheduler, noise, text, pooled, adapter(features), 3, grad_steps=1
    )
    torch.testing.assert_close(out.detach(), frozen, atol=0, rtol=0)  # the same draw
    out.square().mean().backward()
    grads = [p.grad for p in adapter.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="grad_steps"):
        sample_flow(
            pipe.transformer, scheduler, noise, text, pooled, adapter(features), 3, grad_steps=4
        )


def test_training_sigmas_come_from_the_schedulers_table_as_diffusers_scripts_draw_them():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from icg.training.flow import scheduler_sigmas

    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)  # SD3's static shift
    u = torch.tensor([0.0, 0.25, 0.5, 0.9999])
    sigmas = scheduler_sigmas(sd3, u)
    # train_dreambooth_sd3.py: timesteps[(u * N).long()], sigma = timestep / N
    torch.testing.assert_close(sigmas * 1000, sd3.timesteps[(u * 1000).long()])
    assert sigmas[0] == 1.0 and abs(float(sigmas[2]) - 3 * 0.5 / (1 + 2 * 0.5)) < 2e-3
    flux = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    assert abs(float(scheduler_sigmas(flux, u)[2]) - 0.5) < 2e-3  # dynamic: unshifted in training
    sd3.set_timesteps(4)
    with pytest.raises(ValueError, match="set_timesteps was called on it"):
        scheduler_sigmas(sd3, u)


def test_the_flow_loss_weights_and_guidance_reduce_to_the_plain_loss():
    transformer = tiny_sd3_transformer()
    transformer.requires_grad_(False)
    torch.manual_seed(0)
    adapter = build_adapter(transformer, feature_dim=16, num_feature_tokens=3)
    adapter.install(transformer)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    text, pooled = torch.randn(2, 5, 32, generator=g), torch.randn(2, 64, generator=g)
    tokens = adapter(torch.randn(2, 3, 16, generator=g))
    args = (transformer, x0, eps, torch.tensor([0.3, 0.8]), text, pooled, tokens)
    with torch.no_grad():
        plain = flow_matching_loss(*args)
        torch.testing.assert_close(flow_matching_loss(*args, torch.ones(2)), plain)
        first = flow_matching_loss(*args, torch.tensor([2.0, 0.0]))
        assert not torch.equal(first, plain)
        uncond = dict(uncond_states=torch.zeros_like(text), uncond_pooled=torch.zeros_like(pooled))
        assert torch.equal(flow_matching_loss(*args, None, 1.0, **uncond), plain)
        assert not torch.equal(flow_matching_loss(*args, None, 4.0, **uncond), plain)
        with pytest.raises(ValueError, match="uncond_states"):
            flow_matching_loss(*args, None, 4.0)
    adapter.remove(transformer)


def test_the_flow_sampler_follows_fluxs_dynamic_shift_and_distilled_guidance():
    """A FLUX.1-style scheduler (resolution-dependent shift) and a guidance-distilled
    transformer: the sampler's latents are ``FluxPipeline``'s to the bit."""
    from backbone_fixtures import tiny_flux_pipeline
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    pipe = tiny_flux_pipeline()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    torch.manual_seed(0)
    pipe.transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8], guidance_embeds=True,
    ).eval()  # fmt: skip
    text, pooled, _ = pipe.encode_prompt(["red cat", "blue sea"], None, max_sequence_length=8)
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    adapter = build_adapter(pipe.transformer, feature_dim=16, num_feature_tokens=3)
    with torch.no_grad():
        for layer in adapter.attn_layers.values():
            layer.to_v_icg.weight.normal_()
    adapter.install(pipe.transformer)
    tokens = adapter(torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(1))).detach()
    with torch.no_grad():
        expected = pipe(
            prompt_embeds=text, pooled_prompt_embeds=pooled, latents=pack_latents(noise),
            num_inference_steps=3, guidance_scale=2.5, height=16, width=16,
            output_type="latent", joint_attention_kwargs={"icg_tokens": tokens},
        ).images  # fmt: skip
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        out = sample_flow(
            pipe.transformer, scheduler, noise, text, pooled, tokens, 3, guidance_scale=2.5
        )
    assert torch.equal(pack_latents(out), expected)
    assert scheduler.sigmas[0] == 1.0 and abs(float(scheduler.sigmas[1]) - 2 / 3) > 0.01  # shifted
