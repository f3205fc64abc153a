"""Stage A and stage B on the four backbone families (SD1.5, SDXL, SD3, FLUX), tiny random
pipelines on CPU: the training conditioning and sampler are the stock pipelines' own, and one
step of `run_align` / `run_reward` (DRaFT-K) changes the adapter."""

from __future__ import annotations

import pytest
import torch
from backbone_fixtures import FAMILIES, tiny_icg_for, tiny_pipeline
from model_fixtures import perturb_, tiny_qwen2vl
from stage_b_fixtures import USER_DIM, stage_b_config, stage_b_rewards

from icg.data.testing import write_tiny_dataset
from icg.models.backbones import denoiser_of
from icg.models.icg_model import ICGModel
from icg.training.align import AlignConfig, run_align
from icg.training.conditioning import PromptEncoder, TextConditioning, base_family
from icg.training.flow import pack_latents
from icg.training.reward import run_reward
from icg.training.sampling import denoise, denoise_flow

TITLES = ["red cat", "blue sea story"]
SIZE = 32
# the flow VAEs here do not downsample: 16 px keeps SD3's sequence short (256 image tokens)
FAST_SIZE = {"sd15": SIZE, "sdxl": SIZE, "sd3": 16, "flux": 16}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return write_tiny_dataset(root / "data", n_items=3, n_users=3, n_impressions=12, dim=USER_DIM)


def _perturbed_icg(family: str):
    base, model = tiny_icg_for(family, user_dim=USER_DIM)
    perturb_(model)  # a trained adapter: every branch moves the draw
    return base, model


def _pipeline_encoding(base, family: str) -> TextConditioning:
    """The stock pipeline's own batched encoding of ``TITLES``: ``(cond, uncond)``."""
    if family == "sd15":
        cond, uncond = base.encode_prompt(TITLES, torch.device("cpu"), 1, True)
        return TextConditioning(cond), TextConditioning(uncond)
    if family == "flux":
        cond, pooled, _ = base.encode_prompt(TITLES, None)
        return TextConditioning(cond, pooled), None
    args = (TITLES, None) if family == "sdxl" else (TITLES, None, None)
    cond, uncond, pooled, uncond_pooled = base.encode_prompt(*args, device="cpu")
    return TextConditioning(cond, pooled), TextConditioning(uncond, uncond_pooled)


def _as_embeds(text: TextConditioning, uncond: TextConditioning | None) -> dict:
    """The pipeline keywords that hand it precomputed text conditioning."""
    out = {"prompt_embeds": text.states}
    if text.pooled is not None:
        out["pooled_prompt_embeds"] = text.pooled
    if uncond is not None:
        out["negative_prompt_embeds"] = uncond.states
        if uncond.pooled is not None:
            out["negative_pooled_prompt_embeds"] = uncond.pooled
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_the_training_conditioning_and_sampler_are_the_stock_pipelines(family):
    """Prompt encoding (states, pooled text, the unconditional text) is the stock pipeline's
    (to float noise: it encodes a batch, training one prompt at a time), and the sampling chain
    with CFG, ICG tokens and SDXL's time ids draws the pipeline's latents to the bit."""
    base, model = _perturbed_icg(family)
    assert base_family(base) == {"sd15": "sd"}.get(family, family)
    denoiser = denoiser_of(base)
    encoder = PromptEncoder(base, SIZE)
    text = TextConditioning.stack([encoder(t) for t in TITLES])
    uncond = encoder.unconditional().expand(len(TITLES))
    assert (text.pooled is None) == (family == "sd15")
    assert (text.time_ids is None) == (family != "sdxl")
    with torch.no_grad():
        expected, expected_uncond = _pipeline_encoding(base, family)
    for ours, theirs in ((text, expected), (uncond, expected_uncond)):
        if theirs is None:  # FLUX.1: distilled guidance, no unconditional branch
            continue
        torch.testing.assert_close(ours.states, theirs.states, atol=1e-5, rtol=1e-5)
        if theirs.pooled is not None:
            torch.testing.assert_close(ours.pooled, theirs.pooled, atol=1e-5, rtol=1e-5)
    if family == "sdxl":  # force_zeros_for_empty_prompt: the unconditional half is zeros
        assert not uncond.states.any() and not uncond.pooled.any()
        assert uncond.time_ids.tolist()[0] == [SIZE, SIZE, 0, 0, SIZE, SIZE]
    model.adapter.install(denoiser)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        tokens = model(torch.randn(2, 3, 32, generator=g), torch.randn(2, USER_DIM, generator=g))
    flow = family in ("sd3", "flux")
    kwargs_name = "joint_attention_kwargs" if flow else "cross_attention_kwargs"
    layout = tokens if family == "flux" else torch.cat([torch.zeros_like(tokens), tokens])
    draw = dict(
        num_inference_steps=3, guidance_scale=5.0, height=SIZE, width=SIZE,
        output_type="latent", **{kwargs_name: {"icg_tokens": layout}},
        **_as_embeds(text, None if family == "flux" else uncond),
    )  # fmt: skip
    scheduler = type(base.scheduler).from_config(base.scheduler.config)
    h = SIZE // 2 ** (len(base.vae.config.block_out_channels) - 1)
    noise = torch.randn(2, base.vae.config.latent_channels, h, h, generator=g)
    with torch.no_grad():
        if flow:
            ours, _ = denoise_flow(
                denoiser, scheduler, noise, text, tokens, 3, range(0), 5.0, uncond
            )
            if family == "flux":
                noise, ours = pack_latents(noise), pack_latents(ours)  # FluxPipeline's layout
        else:
            scheduler.set_timesteps(3)
            ours, _ = denoise(denoiser, scheduler, noise, text, tokens, (), 5.0, uncond)
        theirs = base(latents=noise, **draw).images
    assert torch.equal(ours, theirs)
    model.adapter.remove(denoiser)


def _align_config(data, out, family: str, **kw) -> AlignConfig:
    values = dict(
        data=data, out=out, base=f"tiny-{family}", mllm="tiny-qwen2vl", max_steps=1,
        batch_size=2, num_meta_tokens=3, num_tokens=2, refiner_hidden_dim=8,
        learning_rate=1e-2, resolution=SIZE, targets="clicks",
    )  # fmt: skip
    values.update(kw)
    return AlignConfig(**values)


def _adapter_state(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("family", FAMILIES)
def test_one_stage_a_step_trains_the_adapter_on_every_family(tiny_data, tmp_path, family):
    base = tiny_pipeline(family)
    frozen = {k: v.clone() for k, v in denoiser_of(base).state_dict().items()}
    mllm, processor = tiny_qwen2vl()
    result = run_align(
        _align_config(tiny_data, tmp_path / "a", family, resolution=FAST_SIZE[family]),
        base=base, mllm=mllm, processor=processor,
    )  # fmt: skip
    assert len(result.losses) == 1 and torch.isfinite(torch.tensor(result.losses)).all()
    state = _adapter_state(result.adapter_dir)
    values = [v for k, v in state.items() if "to_v_icg" in k]
    assert values and any(v.abs().sum() > 0 for v in values)  # moved off the zero init
    assert state["time_cond.weight"].abs().sum() > 0  # the pooled / timestep embedding path
    after = denoiser_of(base).state_dict()
    assert after.keys() == frozen.keys() and all(
        torch.equal(after[k], v) for k, v in frozen.items()
    )
    loaded = ICGModel.from_pretrained(result.adapter_dir, mllm=mllm, processor=processor)
    expected = "JointCoverAdapter" if family in ("sd3", "flux") else "CoverAdapter"
    assert type(loaded.adapter).__name__ == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_one_draft_step_trains_the_adapter_on_every_family(tiny_data, tmp_path, family):
    base, model = _perturbed_icg(family)
    init = tmp_path / "align"
    model.save_pretrained(init / "adapter")
    before = _adapter_state(init / "adapter")
    mllm, processor = tiny_qwen2vl()
    config = stage_b_config(
        (tiny_data, init), tmp_path / "b", max_steps=1, guidance_scale=3.0, user_guidance=1.5,
        drift_denoise_weight=0.5, drift_denoise_batch=2, resolution=FAST_SIZE[family],
    )  # fmt: skip
    parts = dict(base=base, mllm=mllm, processor=processor, rewards=stage_b_rewards())
    result = run_reward(config, **parts)
    assert len(result.rewards) == 1 and torch.isfinite(torch.tensor(result.rewards)).all()
    after = _adapter_state(result.adapter_dir)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert {k for k in changed if "to_v_icg" in k} and "time_cond.weight" in changed


@pytest.mark.parametrize("family", ["sdxl", "sd3"])
def test_a_trainer_refuses_a_family_it_does_not_support_by_name(tiny_data, tmp_path, family):
    base, model = tiny_icg_for(family, user_dim=USER_DIM)
    model.save_pretrained(tmp_path / "align" / "adapter")
    mllm, processor = tiny_qwen2vl()
    config = stage_b_config((tiny_data, tmp_path / "align"), tmp_path / "b", trainer="ranked")
    with pytest.raises(ValueError, match=f"RankedTrainer trains sd bases, this one is {family}"):
        run_reward(config, base=base, mllm=mllm, processor=processor, rewards=stage_b_rewards())


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_words_in_the_prompt_reach_every_text_encoder(family):
    """A user's taste words are part of the prompt, and the prompt goes to each text encoder:
    both CLIP towers (SDXL, SD3: states and pooled), CLIP's pooled and T5's states (FLUX)."""
    base = tiny_pipeline(family)
    encoder = PromptEncoder(base, SIZE)
    plain, worded = encoder("red cat"), encoder("blue sea story, red cat")
    assert not torch.equal(plain.pooled, worded.pooled)  # CLIP's pooled embedding
    assert not torch.equal(plain.states, worded.states)  # T5 (FLUX), CLIP (SDXL, SD3)
    half = plain.pooled.shape[-1] // 2
    if family == "sdxl":  # the states of both CLIP towers, concatenated
        width = base.text_encoder.config.hidden_size
        assert not torch.equal(plain.states[:, :width], worded.states[:, :width])
        assert not torch.equal(plain.states[:, width:], worded.states[:, width:])
    if family == "sd3":  # the pooled text: both towers' projections, concatenated
        assert not torch.equal(plain.pooled[:half], worded.pooled[:half])
        assert not torch.equal(plain.pooled[half:], worded.pooled[half:])
