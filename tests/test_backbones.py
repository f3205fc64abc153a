"""ICG on the four backbone families (SD1.5, SDXL, SD3, FLUX), tiny random configs, CPU only:
an untrained adapter is bit-exact to the base, trained it changes the draw, save/load round
trip, the joint-attention processors install and remove through diffusers' processor API."""

from __future__ import annotations

import pytest
import torch
from backbone_fixtures import (
    FAMILIES,
    draw_kwargs,
    tiny_flux_transformer,
    tiny_icg_for,
    tiny_sd3_transformer,
)
from model_fixtures import dummy_image, perturb_

from icg.models.attention import ICG_TOKENS_KWARG, PassthroughProcessor
from icg.models.backbones import backbone_of, build_adapter, denoiser_of
from icg.models.icg_model import ICGModel
from icg.models.joint_attention import JointICGAttnProcessor
from icg.models.transformer_adapter import JointCoverAdapter
from icg.pipeline import ICGPipeline

TITLES = ["red cat", "blue sea story"]
K, D = 3, 16


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _draw(pipe, family: str, users=None, **kw) -> torch.Tensor:
    images = [dummy_image(0), None]
    return pipe(
        TITLES, images, user_embeddings=users, generator=_gen(), **draw_kwargs(family), **kw
    ).images


@pytest.mark.parametrize("family", FAMILIES)
def test_untrained_icg_pipeline_equals_the_base_pipeline_bit_for_bit(family):
    base, model = tiny_icg_for(family)
    expected = base(TITLES, generator=_gen(), **draw_kwargs(family)).images
    pipe = ICGPipeline(base, model)
    attr = "unet" if family in ("sd15", "sdxl") else "transformer"
    assert pipe.denoiser is getattr(base, attr) is denoiser_of(base)
    assert torch.equal(_draw(pipe, family, users=torch.randn(2, 6)), expected)
    perturb_(model)  # trained: the user and the item change the draw
    personal = _draw(pipe, family, users=torch.randn(2, 6))
    assert personal.shape == expected.shape and torch.isfinite(personal).all()
    assert not torch.equal(personal, expected)
    assert not torch.equal(personal, _draw(pipe, family))
    pipe.remove_adapter()
    assert torch.equal(base(TITLES, generator=_gen(), **draw_kwargs(family)).images, expected)


def _sd3_inputs(batch: int = 2):
    g = _gen(1)
    return dict(
        hidden_states=torch.randn(batch, 4, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(batch, 5, 32, generator=g),
        pooled_projections=torch.randn(batch, 64, generator=g),
        timestep=torch.full((batch,), 500.0),
    )


def _flux_inputs(batch: int = 2):
    g = _gen(1)
    return dict(
        hidden_states=torch.randn(batch, 16, 4, generator=g),
        encoder_hidden_states=torch.randn(batch, 5, 32, generator=g),
        pooled_projections=torch.randn(batch, 32, generator=g),
        timestep=torch.full((batch,), 0.5),
        img_ids=torch.zeros(16, 3),
        txt_ids=torch.zeros(5, 3),
    )


TRANSFORMERS = {
    "sd3": (tiny_sd3_transformer, _sd3_inputs),
    "flux": (tiny_flux_transformer, _flux_inputs),
}


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_joint_adapter_branches_start_at_zero_and_remove_cleanly(family):
    make, inputs = TRANSFORMERS[family]
    transformer = make()
    state = {k: v.clone() for k, v in transformer.state_dict().items()}
    originals = dict(transformer.attn_processors)

    def forward(tokens=None):
        extra = {"joint_attention_kwargs": {ICG_TOKENS_KWARG: tokens}} if tokens is not None else {}
        with torch.no_grad():
            return transformer(**inputs(), **extra).sample

    base = forward()
    adapter = build_adapter(
        transformer, feature_dim=D, num_feature_tokens=K, num_tokens=4, global_conditioning=True
    )
    assert isinstance(adapter, JointCoverAdapter) and backbone_of(transformer).name == family
    # the joint blocks only: not SD3.5's image-only attn2, not FLUX's single-stream blocks
    assert all(".attn.processor" in n and "single" not in n for n in adapter.config.layers)
    assert adapter.config.time_embed_dim == transformer.inner_dim
    adapter.install(transformer)
    procs = transformer.attn_processors
    assert {n for n, p in procs.items() if isinstance(p, JointICGAttnProcessor)} == set(
        adapter.config.layers
    )
    passthrough = [p for n, p in procs.items() if n not in adapter.config.layers]
    assert passthrough and all(isinstance(p, PassthroughProcessor) for p in passthrough)
    tokens = adapter(torch.randn(2, K, D))  # (2, 4, token_dim)
    assert torch.equal(forward(tokens), base)  # zero-initialised
    with torch.no_grad():
        for layer in adapter.attn_layers.values():
            layer.to_v_icg.weight.normal_()
    attention_only = forward(tokens)
    assert not torch.equal(attention_only, base)
    assert torch.equal(forward(torch.zeros_like(tokens)), base)  # CFG's unconditional tokens
    with torch.no_grad():
        adapter.time_cond.weight.normal_()
    assert not torch.equal(forward(tokens), attention_only)  # the pooled/timestep embedding
    assert torch.equal(forward(torch.zeros_like(tokens)), base)  # no bias: zero adds nothing
    adapter.set_scale(0.0)
    assert torch.equal(forward(tokens), base)
    with pytest.raises(ValueError, match="icg_tokens has batch 1"):
        adapter.set_scale(1.0)
        forward(tokens[:1].expand(1, -1, -1))
    adapter.remove(transformer)
    assert all(transformer.attn_processors[n] is p for n, p in originals.items())
    assert torch.equal(forward(), base)
    assert transformer.state_dict().keys() == state.keys()  # the weights live in the adapter
    assert all(torch.equal(transformer.state_dict()[k], v) for k, v in state.items())


def test_an_adapter_refuses_a_transformer_of_another_shape():
    adapter = build_adapter(tiny_sd3_transformer(), feature_dim=D, num_feature_tokens=K)
    with pytest.raises(ValueError, match="Was the adapter built for this base"):
        adapter.install(tiny_flux_transformer())
    with pytest.raises(ValueError, match="not a supported diffusion backbone"):
        build_adapter(torch.nn.Linear(2, 2), feature_dim=D, num_feature_tokens=K)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_draws_the_same_covers(family, tmp_path):
    base, model = tiny_icg_for(family)
    perturb_(model)
    pipe = ICGPipeline(base, model)
    users = torch.randn(2, 6)
    expected = _draw(pipe, family, users=users)
    pipe.save_pretrained(tmp_path / "icg")
    pipe.remove_adapter()
    expected_class = "JointCoverAdapter" if family in ("sd3", "flux") else "CoverAdapter"
    assert (tmp_path / "icg" / "adapter" / "config.json").read_text().count(expected_class) == 1
    loaded = ICGModel.from_pretrained(
        tmp_path / "icg", mllm=model.encoder.mllm, processor=model.encoder.processor
    )
    assert type(loaded.adapter).__name__ == expected_class
    assert loaded.adapter.state_dict().keys() == model.adapter.state_dict().keys()
    out = _draw(ICGPipeline(base, loaded), family, users=users)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def _lora_run(family: str, tmp_path):
    """A 'stage-B run' on ``family``: a trained adapter and a trained denoiser LoRA, saved as the
    stage-B recipe saves them (``RUN/icg/adapter``, ``RUN/icg/unet_lora.safetensors``), with the
    MLLM on disk so `ICGPipeline.from_pretrained` loads everything by record."""
    from model_fixtures import tiny_qwen2vl

    from icg.models.denoiser_lora import LORA_FILE, add_lora, save_lora

    base, model = tiny_icg_for(family)
    perturb_(model)
    mllm, processor = tiny_qwen2vl()
    mllm.save_pretrained(tmp_path / "mllm")
    processor.save_pretrained(tmp_path / "mllm")
    model.encoder.register_to_config(mllm_name_or_path=str(tmp_path / "mllm"))
    denoiser = denoiser_of(base)
    params = add_lora(denoiser, rank=2)
    with torch.no_grad():  # peft's gaussian init starts B at zero; a trained LoRA does not
        g = _gen(7)
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    run = tmp_path / "run" / "icg"
    model.save_pretrained(run / "adapter")
    save_lora(denoiser, run / LORA_FILE)
    return base, model, run


@pytest.mark.parametrize("family", FAMILIES)
def test_a_stage_b_lora_is_loaded_by_from_pretrained_and_drawn(family, tmp_path):
    from icg.models.denoiser_lora import remove_lora

    base, model, run = _lora_run(family, tmp_path)
    users = torch.randn(2, 6)
    plain = base(TITLES, generator=_gen(), **draw_kwargs(family)).images  # base + LoRA
    trained = ICGPipeline(base, model)  # as stage B draws: the LoRA already on the denoiser
    expected = _draw(trained, family, users=users)
    trained.remove_adapter()
    remove_lora(denoiser_of(base))
    base_only = base(TITLES, generator=_gen(), **draw_kwargs(family)).images
    assert not torch.equal(base_only, plain)  # the LoRA mattered

    loaded = ICGPipeline.from_pretrained(run / "adapter", base=base)
    assert loaded.lora == run / "unet_lora.safetensors"
    assert torch.equal(_draw(loaded, family, users=users), expected)  # same bytes drawn
    loaded.remove_adapter()  # the adapter and the LoRA: the base is the base again
    assert not any("lora_" in k for k in denoiser_of(base).state_dict())
    assert torch.equal(base(TITLES, generator=_gen(), **draw_kwargs(family)).images, base_only)

    (run / "unet_lora.safetensors").rename(tmp_path / "elsewhere.safetensors")
    without = ICGPipeline.from_pretrained(run / "adapter", base=base)
    assert without.lora is None
    assert not torch.equal(_draw(without, family, users=users), expected)
    without.remove_adapter()


def test_a_lora_that_does_not_fit_is_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    from icg.artifacts import ArtifactError
    from icg.models.denoiser_lora import add_lora, attach_lora, read_settings, save_lora

    sd3, flux = tiny_sd3_transformer(), tiny_flux_transformer()
    add_lora(flux, rank=2)
    save_lora(flux, tmp_path / "flux_lora.safetensors")
    with pytest.raises(ArtifactError, match="flux_lora.safetensors: the LoRA does not fit"):
        attach_lora(sd3, tmp_path / "flux_lora.safetensors")
    assert not any("lora_" in k for k in sd3.state_dict())  # nothing left behind
    (tmp_path / "torn.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(ArtifactError, match="torn.safetensors"):
        attach_lora(sd3, tmp_path / "torn.safetensors")
    # files written before the settings were recorded: rank from the shapes, alpha = rank
    old = {"a.lora_A.weight": torch.zeros(3, 8), "a.lora_B.weight": torch.zeros(8, 3)}
    save_file(old, str(tmp_path / "old.safetensors"))
    settings = read_settings(tmp_path / "old.safetensors", old, {})
    assert settings["rank"] == 3 and settings["alpha"] == 3.0


def test_a_trained_stage_b_lora_run_is_drawn_by_generate_covers(stage_b_world, tmp_path):
    """The LoRA a real stage-B run saves loads (keys and settings) and `generate_covers` draws
    with it: other covers than the same adapter without it."""
    import pandas as pd
    from stage_b_fixtures import stage_b_config, stage_b_parts

    from icg.data import load_dataset
    from icg.generation import generate_covers
    from icg.models.denoiser_lora import find_lora
    from icg.training.reward import run_reward

    parts = stage_b_parts()
    run_reward(stage_b_config(stage_b_world, tmp_path / "b", max_steps=1, lora_rank=2), **parts)
    folder = tmp_path / "b" / "adapter"
    assert find_lora(folder) == tmp_path / "b" / "unet_lora.safetensors"
    data = load_dataset(stage_b_world[0])
    pairs = pd.DataFrame({"user_id": ["u0", "u1"], "item_id": ["i0", "i1"]})
    covers = {}
    for name, lora in (("with", find_lora(folder)), ("without", None)):
        model = ICGModel.from_pretrained(folder, parts["mllm"], parts["processor"])
        pipe = ICGPipeline(parts["base"], model, lora=lora)
        manifest = generate_covers(pipe, data, pairs, tmp_path / name, num_inference_steps=2)
        pipe.remove_adapter()
        covers[name] = [(tmp_path / name / p).read_bytes() for p in manifest["path"]]
    assert len(covers["with"]) == 2 and covers["with"] != covers["without"]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_user_guidance_reaches_the_transformer(family):
    """`user_guidance` runs through ``joint_attention_kwargs``: 0 is the no-user draw to the bit,
    2 pushes past the plain personalized draw."""
    base, model = tiny_icg_for(family)
    perturb_(model)
    pipe = ICGPipeline(base, model)
    users = torch.randn(2, 6)
    cold = _draw(pipe, family)
    assert torch.equal(_draw(pipe, family, users=users, user_guidance=0.0), cold)
    plain = _draw(pipe, family, users=users)
    pushed = _draw(pipe, family, users=users, user_guidance=2.0)
    assert not torch.equal(plain, cold) and not torch.equal(pushed, plain)
