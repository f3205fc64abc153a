"""ICGPipeline: bit-exact zero init, determinism, the item cache, grids, loading by path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import dummy_image, perturb_, tiny_icg, tiny_qwen2vl

from icg.pipeline import ICGPipeline, cfg_tokens, image_digest

TITLES = ["red cat", "blue sea story"]
KW = dict(num_inference_steps=2, guidance_scale=5.0, height=32, width=32, output_type="pt")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_untrained_icg_equals_base_pipeline_bit_for_bit():
    base, model = tiny_icg()
    expected = base(TITLES, generator=_gen(), **KW).images
    pipe = ICGPipeline(base, model)
    users = torch.randn(2, 6)
    out = pipe(TITLES, [dummy_image(0), None], user_embeddings=users, generator=_gen(), **KW).images
    assert torch.equal(out, expected)
    pipe.remove_adapter()
    assert torch.equal(base(TITLES, generator=_gen(), **KW).images, expected)


def test_trained_pipeline_is_deterministic_and_personalized():
    base, model = tiny_icg()
    perturb_(model)
    pipe = ICGPipeline(base, model)
    images = [dummy_image(0), dummy_image(1)]
    users = torch.randn(2, 6)
    a = pipe(TITLES, images, user_embeddings=users, generator=_gen(), **KW).images
    b = pipe(TITLES, images, user_embeddings=users, generator=_gen(), **KW).images
    assert torch.equal(a, b)
    cold = pipe(TITLES, images, generator=_gen(), **KW).images
    assert not torch.equal(a, cold)
    pil = pipe(TITLES[0], images[0], generator=_gen(), num_inference_steps=2, height=32, width=32)
    assert pil.images[0].size == (32, 32)


def test_grid_costs_one_mllm_forward_per_item():
    base, model = tiny_icg()
    perturb_(model)
    pipe = ICGPipeline(base, model)
    grid = pipe.generate_grid(
        TITLES,
        [dummy_image(0), None],
        user_embeddings=torch.randn(3, 6),
        item_keys=["i1", "i2"],
        seed=0,
        **KW,
    )
    assert len(grid) == 3 and all(len(row) == 2 for row in grid)
    assert pipe.items_encoded == 2 and pipe.mllm_calls == 1
    pipe.generate_grid(
        TITLES,
        [dummy_image(0), None],
        user_embeddings=torch.randn(2, 6),
        item_keys=["i1", "i2"],
        **KW,
    )
    assert pipe.items_encoded == 2
    pipe.encode_items(["red cat"], [dummy_image(5)], item_keys=["i1"])  # a new image → a miss
    assert pipe.items_encoded == 3


def test_from_pretrained_by_path_round_trip(tmp_path):
    base, model = tiny_icg()
    perturb_(model)
    base.save_pretrained(tmp_path / "sd")
    mllm, processor = tiny_qwen2vl()
    mllm.save_pretrained(tmp_path / "mllm")
    processor.save_pretrained(tmp_path / "mllm")
    model.adapter.register_to_config(base_model=str(tmp_path / "sd"))
    model.encoder.register_to_config(mllm_name_or_path=str(tmp_path / "mllm"))
    pipe = ICGPipeline(base, model)
    expected = pipe(
        TITLES, [dummy_image(0), None], user_embeddings=torch.ones(2, 6), generator=_gen(), **KW
    ).images
    pipe.save_pretrained(tmp_path / "icg")
    loaded = ICGPipeline.from_pretrained(tmp_path / "icg")
    loaded.base.set_progress_bar_config(disable=True)
    out = loaded(
        TITLES, [dummy_image(0), None], user_embeddings=torch.ones(2, 6), generator=_gen(), **KW
    ).images
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_pure_helpers():
    t = torch.ones(2, 3, 4)
    assert torch.equal(cfg_tokens(t, True)[:2], torch.zeros_like(t))
    assert cfg_tokens(t, False) is t
    assert image_digest(None) == "" and image_digest(dummy_image(0)) == image_digest(dummy_image(0))
    assert image_digest(dummy_image(0)) != image_digest(dummy_image(1))


def test_reference_guided_strength_is_diffusers_img2img_with_the_icg_branch():
    from diffusers import StableDiffusionImg2ImgPipeline

    base, model = tiny_icg()
    pipe = ICGPipeline(base, model)  # zero-initialised adapter: exactly the base img2img
    images = [dummy_image(0).resize((32, 32)), dummy_image(1).resize((32, 32))]
    kw = dict(num_inference_steps=4, guidance_scale=5.0, output_type="pt")
    out = pipe(TITLES, images, strength=0.5, generator=_gen(), **kw).images
    i2i = StableDiffusionImg2ImgPipeline(**base.components)
    expected = i2i(prompt=TITLES, image=images, strength=0.5, generator=_gen(), **kw).images
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    # the reference matters, and a trained adapter still changes the result
    other = pipe(TITLES, images[::-1], strength=0.5, generator=_gen(), **kw).images
    assert not torch.equal(out, other)
    perturb_(model)
    assert not torch.equal(out, pipe(TITLES, images, strength=0.5, generator=_gen(), **kw).images)
    with pytest.raises(ValueError, match="needs a reference image"):
        pipe(TITLES, [images[0], None], strength=0.5, generator=_gen(), **kw)


def test_user_guidance_zero_equals_the_no_user_draw_bit_for_bit():
    base, model = tiny_icg()
    perturb_(model)
    pipe = ICGPipeline(base, model)
    images, users = [dummy_image(0), dummy_image(1)], torch.randn(2, 6)
    cold = pipe(TITLES, images, generator=_gen(), **KW).images
    zero = pipe(TITLES, images, user_embeddings=users, user_guidance=0.0, generator=_gen(), **KW)
    assert torch.equal(zero.images, cold)
    one = pipe(TITLES, images, user_embeddings=users, user_guidance=1.0, generator=_gen(), **KW)
    plain = pipe(TITLES, images, user_embeddings=users, generator=_gen(), **KW).images
    assert torch.equal(one.images, plain) and not torch.equal(plain, cold)
    two = pipe(TITLES, images, user_embeddings=users, user_guidance=2.0, generator=_gen(), **KW)
    assert not torch.equal(two.images, plain) and not torch.equal(two.images, cold)


def test_user_guidance_hook_mixes_with_and_without_user_predictions():
    from icg.models.attention import ICG_TOKENS_KWARG
    from icg.models.guidance import user_guidance_hook

    base, model = tiny_icg()
    perturb_(model)
    model.adapter.install(base.unet)
    x, text = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    feats = torch.randn(2, 3, model.encoder.config.hidden_size)
    with_user, without = model(feats, torch.randn(2, 6)), model(feats)

    def eps(tokens):
        return base.unet(x, 10, text, cross_attention_kwargs={ICG_TOKENS_KWARG: tokens}).sample

    expected = eps(without) + 3.0 * (eps(with_user) - eps(without))
    with user_guidance_hook(base.unet, without, 3.0):
        guided = eps(with_user)
    torch.testing.assert_close(guided, expected)
    assert not torch.equal(eps(with_user), guided)  # the hook is gone afterwards


def test_evaluation_finds_the_adapter_and_the_lora_of_a_lora_run(tmp_path):
    from icg.evaluation.methods import adapter_folder
    from icg.models.denoiser_lora import LORA_FILE, find_lora

    run = tmp_path / "run"
    (run / "icg" / "adapter").mkdir(parents=True)
    (run / "icg" / "adapter" / "icg_config.json").write_text("{}")
    assert adapter_folder(run, "icg") == run / "icg" / "adapter"
    assert find_lora(run / "icg" / "adapter") is None
    (run / "icg" / LORA_FILE).write_bytes(b"")  # stage B with lora_rank > 0 writes it here
    assert adapter_folder(run, "icg") == run / "icg" / "adapter"  # drawn with it, not refused
    assert find_lora(run / "icg" / "adapter") == run / "icg" / LORA_FILE


def test_sampling_defaults_are_icg_config_everywhere():
    """One set of defaults: the pipeline, generation, serve, batch and the CLI take icg.config's."""
    import inspect

    from icg.batch.config import BatchConfig
    from icg.cli.run import generate as generate_command
    from icg.config import DEFAULT_GUIDANCE, DEFAULT_STEPS
    from icg.generation import generate_covers
    from icg.serve.config import ServeConfig

    def defaults(func) -> tuple:
        params = inspect.signature(func).parameters
        return tuple(params[n].default for n in ("num_inference_steps", "guidance_scale"))

    assert defaults(ICGPipeline.__call__) == (DEFAULT_STEPS, DEFAULT_GUIDANCE)
    assert defaults(generate_covers) == (DEFAULT_STEPS, DEFAULT_GUIDANCE)
    cli = inspect.signature(generate_command).parameters
    assert (cli["steps"].default, cli["guidance"].default) == (DEFAULT_STEPS, DEFAULT_GUIDANCE)
    serve = ServeConfig.model_fields
    assert serve["default_steps"].default == DEFAULT_STEPS
    assert serve["guidance_scale"].default == DEFAULT_GUIDANCE
    fields = BatchConfig.model_fields
    steps = fields["num_inference_steps"].default
    guidance = fields["guidance_scale"].default
    if steps is None:  # resolved from the run's record, falling back on icg.config
        from icg.batch.config import SAMPLING_DEFAULTS

        steps, guidance = (SAMPLING_DEFAULTS[k] for k in ("num_inference_steps", "guidance_scale"))
    assert (steps, guidance) == (DEFAULT_STEPS, DEFAULT_GUIDANCE)


def test_call_returns_typed_output_with_seeds_and_scores():
    from diffusers.utils import BaseOutput

    from icg.pipeline import ICGPipelineOutput

    base, model = tiny_icg()
    perturb_(model)
    pipe = ICGPipeline(base, model)
    generators = [_gen(11), _gen(12)]
    out = pipe(TITLES, [dummy_image(0), None], generator=generators, **KW)
    assert isinstance(out, ICGPipelineOutput) and isinstance(out, BaseOutput)
    assert out.seeds == [11, 12] and out.scores is None
    assert out.images.shape == (2, 3, 32, 32)
    assert pipe(TITLES, generator=None, **KW).seeds is None

    class Brightness(torch.nn.Module):
        def forward(self, images, titles, users=None):
            assert images.shape == (len(titles), 3, 32, 32)
            return images.mean(dim=(1, 2, 3)), {}

    pil = pipe(TITLES, generator=[_gen(11), _gen(12)], reward=Brightness(), num_inference_steps=2,
               height=32, width=32)  # fmt: skip
    assert pil.scores.shape == (2,)
    pixels = torch.stack([torch.from_numpy(np.array(im)) for im in pil.images])
    expected = pixels.float().div(255).mean(dim=(1, 2, 3)).numpy()
    assert pil.scores == pytest.approx(expected, abs=1e-6)
