"""coverworld-tiny `flow`: the SD3-format recipe on tiny parts built in code.

The tiny `clip` is a 1-layer ``CLIPModel`` over the zoo tokenizer's vocabulary (the tokenizer's
text files are the only shipped thing used), the tiny `sd` is a 3-level ``AutoencoderKL`` in a
folder, so the recipe runs its whole path (cache, train, checkpoint, publish, gates) in seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusion3Pipeline
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel, CLIPTextModelWithProjection, CLIPTokenizer

from icg.checkpoints import latest_checkpoint, load_trainer_state
from icg.models.base_pipeline import absent_components, load_base
from icg.training.conditioning import PromptEncoder, base_family
from icg.training.objective import FlowObjective, training_objective
from icg.zoo import REGISTRY
from icg.zoo.gates import gate_passed
from icg.zoo.recipes import _base, flow
from icg.zoo.recipes.flow import data, gates, loop, models

TINY = flow.FlowRecipeConfig(
    num_latents=8,
    batch=4,
    steps=4,
    warmup=1,
    checkpoint_every=2,
    num_layers=2,
    num_attention_heads=2,
    attention_head_dim=8,
    gate_items=2,
    gate_steps=2,
)
TRANSFORMER_WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny CLIPModel folder (zoo tokenizer) and a tiny `sd`-like folder with a VAE."""
    root = tmp_path_factory.mktemp("sources")
    tokenizer = CLIPTokenizer.from_pretrained(str(REGISTRY["clip"].path))
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=8,
    )  # fmt: skip
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=12))
    clip.save_pretrained(str(root / "clip"))
    tokenizer.save_pretrained(str(root / "clip"))
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(4, 4, 4),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=64,
        scaling_factor=1.0,
        mid_block_add_attention=False,
    )
    vae.save_pretrained(str(root / "sd" / "vae"))
    return root / "clip", root / "sd"


def _train(out: Path, sources, resume: bool = False) -> None:
    clip_dir, sd_dir = sources
    flow.train(
        out, resume=resume, seed=0, config=TINY, clip_dir=clip_dir, vae_from=sd_dir,
        work_dir=out.with_name(out.name + "-work"),
    )  # fmt: skip


def test_text_tower_is_the_clip_models_tower_and_projection(sources) -> None:
    clip_dir, _ = sources
    tower, tokenizer = models.load_text_tower(clip_dir)
    clip = CLIPModel.from_pretrained(str(clip_dir))
    assert isinstance(tower, CLIPTextModelWithProjection)
    torch.testing.assert_close(tower.text_projection.weight, clip.text_projection.weight)
    ids = tokenizer(["a cover for The Crimson Orb"], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = clip.text_projection(clip.text_model(ids).pooler_output)
        torch.testing.assert_close(tower(ids).text_embeds, expected)
    assert not any(p.requires_grad for p in tower.parameters())


def test_training_conditioning_is_the_sd3_pipelines(sources, tmp_path: Path) -> None:
    clip_dir, sd_dir = sources
    tower, tokenizer = models.load_text_tower(clip_dir)
    vae = models.frozen_vae(tmp_path, sd_dir)
    assert vae.config.shift_factor == 0.0 and vae.config.scaling_factor == 1.0
    transformer = models.build_transformer(TINY, 4, 16, 16, 12)
    pipe = models.assemble(vae, transformer, tower, tokenizer, TINY)
    prompts = ["a cover for The Crimson Orb, dark, a thin frame", ""]
    theirs, _, theirs_pooled, _ = pipe.encode_prompt(
        prompts, None, None, device=torch.device("cpu"), do_classifier_free_guidance=False
    )
    clip = data.encode_clip(tower, tokenizer, prompts)
    ours, ours_pooled = data.sd3_text(clip["states"], clip["pooled"], 32)
    assert ours.shape == (2, tokenizer.model_max_length + data.T5_TOKENS, 32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(ours_pooled, theirs_pooled, rtol=0, atol=0)
    with pytest.raises(ValueError, match="joint_attention_dim=16"):
        data.sd3_text(clip["states"], clip["pooled"], 16)


def test_untrained_transformer_predicts_zero_and_default_size_is_the_unets() -> None:
    model = models.build_transformer(TINY, 4, 16, 16, 12).eval()
    with torch.no_grad():
        v = model(
            hidden_states=torch.randn(2, 4, 16, 16),
            timestep=torch.tensor([10.0, 900.0]),
            encoder_hidden_states=torch.randn(2, 40, 32),
            pooled_projections=torch.randn(2, 24),
        ).sample
    assert v.shape == (2, 4, 16, 16) and torch.count_nonzero(v) == 0  # adaLN-Zero
    full = models.build_transformer(flow.FlowRecipeConfig(), 8, 16, 64, 64)
    n = sum(p.numel() for p in full.parameters())
    assert 1_000_000 <= n <= 4_000_000  # the `sd` UNet has 1.69M
    with pytest.raises(ValueError, match="patch_size=3"):
        models.build_transformer(TINY.model_copy(update={"patch_size": 3}), 4, 16, 16, 12)


def test_batches_are_a_pure_function_of_the_step() -> None:
    cfg = TINY.model_copy(update={"batch": 16, "cfg_drop": 0.5})
    torch.manual_seed(0)
    cache = {
        "latents": torch.randn(10, 4, 16, 16),
        "states": torch.randn(10, 32, 16).half(),
        "pooled": torch.randn(10, 12),
        "uncond_states": torch.zeros(32, 16),
        "uncond_pooled": torch.full((12,), 7.0),
    }
    scheduler = models.build_scheduler(cfg)
    a = data.batch(3, 0, cache, cfg, scheduler, 32)
    b = data.batch(3, 0, cache, cfg, scheduler, 32)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(a["noise"], data.batch(4, 0, cache, cfg, scheduler, 32)["noise"])
    assert a["text"].shape == (16, 32 + data.T5_TOKENS, 32) and a["pooled"].shape == (16, 24)
    assert torch.count_nonzero(a["text"][:, 32:]) == 0  # SD3 without T5: zero tokens
    dropped = (a["pooled"] == 7.0).all(dim=1)
    assert 0 < int(dropped.sum()) < 16
    assert torch.count_nonzero(a["text"][dropped]) == 0
    assert ((a["sigmas"] > 0) & (a["sigmas"] < 1)).all()
    loss = loop.flow_loss(models.build_transformer(cfg, 4, 16, 16, 12), a)
    # adaLN-Zero predicts 0, so the first loss is the target's mean square: |eps - x0|^2
    torch.testing.assert_close(loss, (a["noise"] - a["latents"]).pow(2).mean())


def test_ceiling_gaps_gate_within_three_points_of_the_title_ceiling() -> None:
    base = {"prompt_style": 0.7, "roundtrip_psnr": 30.0}
    at = {"prompt_motif": 0.90, "prompt_motif_ceiling": 0.93}
    at |= {"prompt_palette": 0.95, "prompt_palette_ceiling": 0.92}
    gaps = gates.ceiling_gaps(at)
    assert gaps == pytest.approx({"prompt_motif_gap": -0.03, "prompt_palette_gap": 0.03})
    assert gate_passed(base | at | gaps, gates.THRESHOLDS)  # exactly 3 points below passes
    below = at | {"prompt_motif": 0.899}
    assert not gate_passed(base | below | gates.ceiling_gaps(below), gates.THRESHOLDS)


class _Stop(Exception):
    pass


def test_recipe_resumes_bit_exactly_and_publishes_a_stock_sd3_pipeline_that_draws(
    sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _train(straight, sources)
    real_batch = data.batch

    def crashing_batch(step: int, *args):
        if step == 3:
            raise _Stop
        return real_batch(step, *args)

    monkeypatch.setattr(data, "batch", crashing_batch)
    with pytest.raises(_Stop):
        _train(interrupted, sources)
    ckpt = latest_checkpoint(tmp_path / "interrupted-work" / "transformer_ckpt")
    assert ckpt is not None and load_trainer_state(ckpt)["step"] == 2
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "ema", "optimizer.safetensors", "trainer_state.json", "transformer",
    ]  # fmt: skip
    held = tmp_path / "held"
    shutil.copytree(ckpt, held)
    monkeypatch.setattr(data, "batch", real_batch)
    _train(interrupted, sources, resume=True)
    a = load_file(str(straight / TRANSFORMER_WEIGHTS))
    b = load_file(str(interrupted / TRANSFORMER_WEIGHTS))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert load_file(str(held / "ema" / TRANSFORMER_WEIGHTS.name)).keys() == a.keys()

    with pytest.raises(ValueError, match="expected"):  # diffusers: T5 absent must be said
        StableDiffusion3Pipeline.from_pretrained(str(straight))
    pipe = StableDiffusion3Pipeline.from_pretrained(
        str(straight), text_encoder_3=None, tokenizer_3=None
    )
    pipe.set_progress_bar_config(disable=True)
    base = load_base(str(straight))  # icg's loader: what `--base DIR` / `zoo:flow` runs
    assert isinstance(base, StableDiffusion3Pipeline) and base_family(base) == "sd3"
    assert isinstance(training_objective(base), FlowObjective)
    prompt = "a cover for The Crimson Orb, dark"
    stage_a = PromptEncoder(base, 64)(prompt)  # stage A's conditioning on this base
    clip = data.encode_clip(base.text_encoder, base.tokenizer, [prompt])
    states, pooled = data.sd3_text(clip["states"], clip["pooled"], 32)
    torch.testing.assert_close(stage_a.states, states[0], rtol=0, atol=0)
    torch.testing.assert_close(stage_a.pooled, pooled[0], rtol=0, atol=0)
    assert isinstance(pipe.text_encoder, CLIPTextModelWithProjection)
    assert isinstance(pipe.text_encoder_2, CLIPTextModelWithProjection)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    shipped_vae = AutoencoderKL.from_pretrained(str(sources[1] / "vae")).state_dict()
    for k, v in pipe.vae.state_dict().items():
        torch.testing.assert_close(v, shipped_vae[k], rtol=0, atol=0, msg=k)
    out = pipe(
        "a cover for The Crimson Orb",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    record = _base.read_gates(straight)
    assert record["name"] == "flow" and set(record["thresholds"]) == set(gates.THRESHOLDS)
    metrics = record["metrics"]
    assert set(record["thresholds"]) <= set(metrics)
    assert metrics["prompt_motif_gap"] == pytest.approx(
        metrics["prompt_motif"] - metrics["prompt_motif_ceiling"]
    )
    assert record["trained_parts"] == ["transformer"]
    assert record["reused_parts"] == "VAE from sd, text tower from clip"  # no machine paths
    assert (straight / "README.md").is_file()
    assert not list(straight.rglob("*.bin")), "weights must be safetensors"


def test_registry_lists_flow_unshipped_with_a_train_hint() -> None:
    entry = REGISTRY["flow"]
    assert not entry.shipped and entry.loader == "diffusers.StableDiffusion3Pipeline"
    assert entry.config_class() is flow.FlowRecipeConfig


def test_absent_components_are_the_null_entries_of_model_index(tmp_path: Path) -> None:
    (tmp_path / "model_index.json").write_text(
        '{"_class_name": "StableDiffusion3Pipeline", "text_encoder_3": [null, null], '
        '"tokenizer_3": [null, null], "vae": ["diffusers", "AutoencoderKL"]}'
    )
    assert absent_components(tmp_path) == {"text_encoder_3": None, "tokenizer_3": None}
    assert absent_components(tmp_path / "nowhere") == {}
