"""The pretrained ICG adapter (`icg zoo train icg-adapter`) and stage A's ``--init-adapter``:
exact resume, the gates' arithmetic, stage A starting from it, and zero init kept bit for bit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from align_fixtures import align_config, align_parts
from diffusers import StableDiffusionPipeline
from model_fixtures import get_dummy_components, perturb_, tiny_qwen2vl
from pydantic import ValidationError
from safetensors.torch import load_file
from typer.testing import CliRunner

from icg.checkpoints import latest_checkpoint, load_trainer_state
from icg.cli import build_app
from icg.data.testing import write_tiny_dataset
from icg.models.attention import ICGAttnProcessor
from icg.models.icg_model import ICGModel
from icg.pipeline import ICGPipeline
from icg.training.align import AlignConfig, AlignRecipe, run_align
from icg.world.attributes import STYLE_DIMS
from icg.zoo.gates import gate_passed
from icg.zoo.recipes import _base
from icg.zoo.recipes.icg_adapter import recipe
from icg.zoo.recipes.icg_adapter.config import IcgAdapterRecipeConfig
from icg.zoo.recipes.icg_adapter.gates import THRESHOLDS, agreement_chance, gate_metrics

TINY = IcgAdapterRecipeConfig(
    base="tiny-sd", mllm="tiny-qwen2vl", num_meta_tokens=2, num_tokens=2, steps=4,
    batch_size=2, warmup=1, learning_rate=1e-2, checkpoint_every=2, log_every=1,
    gate_items=2, gate_steps=2, ema_decay=0.9, image_size=16,
)  # fmt: skip
PUBLISHED = ["README.md", "adapter", "gates.json", "icg_config.json", "meta_tokens"]


def _parts() -> dict:
    base = StableDiffusionPipeline(**get_dummy_components())
    base.set_progress_bar_config(disable=True)
    mllm, processor = tiny_qwen2vl()
    return {"base": base, "mllm": mllm, "processor": processor}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_dataset(
        tmp_path_factory.mktemp("data"), n_items=3, n_users=3, n_impressions=12, dim=4
    )


def _pretrained(folder: Path, num_meta_tokens: int = 2, **kw) -> tuple[ICGModel, dict]:
    """A 'trained' ICG model shaped like stage A's tiny config, without a refiner, saved."""
    parts = _parts()
    torch.manual_seed(5)
    model = ICGModel.build(
        parts["base"].unet, parts["mllm"], parts["processor"],
        num_meta_tokens=num_meta_tokens, num_tokens=2, user_dim=0, base_model="tiny-sd",
        mllm_name_or_path="tiny-qwen2vl", base_prompt="a cover for {title}",
        global_conditioning=True, **kw,
    )  # fmt: skip
    perturb_(model)
    model.save_pretrained(folder)
    return model, parts


class _Stop(Exception):
    pass


# ---- the recipe ------------------------------------------------------------------------------
def test_recipe_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    recipe.train(straight, seed=0, config=TINY, **_parts())
    real_batch = recipe.batch

    def crashing(step, *args):
        if step == 3:  # after the step-2 checkpoint
            raise _Stop
        return real_batch(step, *args)

    monkeypatch.setattr(recipe, "batch", crashing)
    crashed = _parts()
    with pytest.raises(_Stop):
        recipe.train(interrupted, seed=0, config=TINY, **crashed)
    processors = crashed["base"].unet.attn_processors.values()
    assert not [p for p in processors if isinstance(p, ICGAttnProcessor)]  # base left as given
    ckpt = latest_checkpoint(interrupted / _base.CHECKPOINT_DIR)
    held = shutil.copytree(ckpt, tmp_path / "held")
    monkeypatch.setattr(recipe, "batch", real_batch)
    recipe.train(interrupted, resume=True, seed=0, config=TINY, **_parts())

    assert sorted(p.name for p in held.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.safetensors", "trainer_state.json",
    ]  # fmt: skip
    state = load_trainer_state(held)
    assert state["step"] == 2 and state["ema"]["steps"] == 2
    for part in ("meta_tokens", "adapter"):
        file = next((straight / part).glob("*.safetensors")).name
        a, b = load_file(str(straight / part / file)), load_file(str(interrupted / part / file))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    for folder in (straight, interrupted):
        assert sorted(p.name for p in folder.iterdir()) == PUBLISHED  # no refiner, no checkpoints
        gates = _base.read_gates(folder)
        assert gates["name"] == "icg-adapter" and set(THRESHOLDS) <= set(gates["metrics"])
        assert {"no_adapter_motif_kept", "heldout_loss", "heldout_loss_no_adapter"} <= set(
            gates["metrics"]
        )
    config = json.loads((straight / "icg_config.json").read_text())
    assert config["parts"] == ["meta_tokens", "adapter"]
    assert (config["base_model"], config["mllm"]) == ("tiny-sd", "tiny-qwen2vl")


def test_the_published_weights_are_the_ema_of_the_trained_ones(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(_base, "clear_checkpoint", lambda out: None)  # keep the last one
    recipe.train(tmp_path, seed=0, config=TINY.model_copy(update={"steps": 2}), **_parts())
    published = load_file(str(tmp_path / "meta_tokens" / "diffusion_pytorch_model.safetensors"))
    ckpt = latest_checkpoint(tmp_path / _base.CHECKPOINT_DIR)
    ema, raw = load_file(str(ckpt / "ema.safetensors")), load_file(str(ckpt / "model.safetensors"))
    assert torch.equal(published["meta_tokens"], ema["encoder.meta_tokens"])
    assert not torch.equal(published["meta_tokens"], raw["encoder.meta_tokens"])
    start = recipe.setup(TINY, 0, **_parts()).model.encoder.meta_tokens
    assert not torch.equal(raw["encoder.meta_tokens"], start)  # training moved them


def test_batches_are_a_pure_function_of_the_step() -> None:
    a, b = recipe.batch(7, TINY, 16), recipe.batch(7, TINY, 16)
    assert a.titles == b.titles and np.array_equal(a.pixels, b.pixels)
    assert not np.array_equal(recipe.batch(8, TINY, 16).pixels, a.pixels)
    assert a.pixels.shape == (TINY.batch_size, 16, 16, 3)


def test_recipe_architecture_defaults_fit_a_default_stage_a() -> None:
    """`--init-adapter zoo:icg-adapter` must fit stage A's defaults."""
    recipe_defaults = IcgAdapterRecipeConfig()
    for name in (
        "base", "mllm", "num_meta_tokens", "num_tokens", "global_conditioning", "read_image",
        "base_prompt",
    ):  # fmt: skip
        assert getattr(recipe_defaults, name) == AlignConfig.model_fields[name].default, name
    assert AlignConfig.model_fields["lora_rank"].default == 0  # the recipe trains no LoRA


# ---- the gates' arithmetic -------------------------------------------------------------------
def test_gate_metrics_on_synthetic_numbers() -> None:
    n, s = 10, len(STYLE_DIMS)
    ref_motif, ref_palette = np.arange(n) % 8, (np.arange(n) + 3) % 8
    drawn_motif, drawn_palette = ref_motif.copy(), ref_palette.copy()
    drawn_motif[0] = (ref_motif[0] + 1) % 8  # 9 of 10 motifs kept
    drawn_palette[:2] = (ref_palette[:2] + 1) % 8  # 8 of 10 palettes kept, one overlaps
    ref_style = np.tile(np.arange(n)[:, None] % 3, (1, s))  # (N, S)
    drawn_style = ref_style.copy()
    drawn_style[:3, 0] = (ref_style[:3, 0] + 1) % 3  # dimension 0: 7 of 10 agree
    m = gate_metrics(ref_motif, ref_palette, ref_style, drawn_motif, drawn_palette, drawn_style)
    assert m["motif_kept"] == pytest.approx(0.9) and m["palette_kept"] == pytest.approx(0.8)
    assert m["content_kept"] == pytest.approx(0.8)
    assert m[f"style_agreement_{STYLE_DIMS[0]}"] == pytest.approx(0.7)
    assert all(m[f"style_agreement_{d}"] == 1.0 for d in STYLE_DIMS[1:])
    assert m["style_agreement_min"] == pytest.approx(0.7)
    assert m["style_agreement_mean"] == pytest.approx((0.7 + (s - 1)) / s)
    assert m["n"] == n
    assert not gate_passed(m, THRESHOLDS)  # palette 0.8 < 0.9
    drawn_palette[:] = ref_palette
    m = gate_metrics(ref_motif, ref_palette, ref_style, drawn_motif, drawn_palette, drawn_style)
    assert gate_passed(m, THRESHOLDS)  # 0.9, 1.0 and 0.7: every gate is inclusive


def test_chance_agreement_of_three_balanced_levels_is_a_third() -> None:
    ref = np.array([0, 1, 2] * 4)
    assert agreement_chance(ref, np.roll(ref, 1)) == pytest.approx(1 / 3)
    assert agreement_chance(ref, np.zeros(12, dtype=int)) == pytest.approx(1 / 3)
    assert agreement_chance(np.zeros(4, dtype=int), np.zeros(4, dtype=int)) == 1.0


def test_gate_metrics_name_mismatched_shapes() -> None:
    ok = np.zeros(4, dtype=int)
    style = np.zeros((4, len(STYLE_DIMS)), dtype=int)
    with pytest.raises(ValueError, match="drawn_motif: expected 4"):
        gate_metrics(ok, ok, style, ok[:3], ok, style)
    with pytest.raises(ValueError, match="ref_style/drawn_style"):
        gate_metrics(ok, ok, style, ok, ok, style[:, :2])


# ---- stage A: --init-adapter -----------------------------------------------------------------
def test_stage_a_starts_from_a_pretrained_adapter(data_dir, tmp_path) -> None:
    pretrained, parts = _pretrained(tmp_path / "pretrained")
    cfg = align_config(data_dir, tmp_path / "run", init_adapter=str(tmp_path / "pretrained"))
    stage_a = AlignRecipe(cfg, **align_parts())
    stage_a.setup()
    try:
        icg = stage_a.icg
        assert icg.refiner is not None  # stage A adds its own, at its zero gate
        torch.testing.assert_close(icg.encoder.meta_tokens, pretrained.encoder.meta_tokens)
        saved = pretrained.adapter.state_dict()
        for k, v in icg.adapter.state_dict().items():
            torch.testing.assert_close(v, saved[k], rtol=0, atol=0, msg=k)
        titles = ["the red cat", "a blue sun"]
        with torch.no_grad():
            want = pretrained(pretrained.encoder(titles))  # (B, K', T)
            feats = icg.encoder(titles)
            users = torch.randn(2, icg.refiner.config.user_dim)
            got = icg(feats, users)
        torch.testing.assert_close(got, want, rtol=0, atol=0)  # the first forward is its
    finally:
        stage_a.cleanup()


def test_an_init_adapter_that_does_not_fit_names_the_folder_and_fields(data_dir, tmp_path) -> None:
    _pretrained(tmp_path / "wide", num_meta_tokens=3)
    cfg = align_config(data_dir, tmp_path / "run", init_adapter=str(tmp_path / "wide"))
    stage_a = AlignRecipe(cfg, **align_parts())
    with pytest.raises(ValueError, match=r"wide: does not fit.*meta_tokens\.num_meta_tokens: 3"):
        stage_a.setup()
    stage_a.cleanup()
    with pytest.raises(ValidationError, match="init_adapter"):
        align_config(data_dir, tmp_path / "run", init_adapter=str(tmp_path / "nowhere"))


def test_init_adapter_none_keeps_stage_a_bit_exact(data_dir, tmp_path) -> None:
    """The pinned losses of `test_align` hold with ``none``, and the adapter starts at zero."""
    default = run_align(align_config(data_dir, tmp_path / "a"), **align_parts())
    none = run_align(align_config(data_dir, tmp_path / "b", init_adapter="none"), **align_parts())
    assert none.losses == default.losses
    torch.testing.assert_close(
        torch.tensor(none.losses[:2]), torch.tensor([1.11880, 1.18558]), atol=1e-4, rtol=0
    )
    for part in ("meta_tokens", "adapter", "refiner"):
        file = next((default.adapter_dir / part).glob("*.safetensors")).name
        a = load_file(str(default.adapter_dir / part / file))
        b = load_file(str(none.adapter_dir / part / file))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    stage_a = AlignRecipe(align_config(data_dir, tmp_path / "c"), **align_parts())
    stage_a.setup()
    try:  # zero init: the ICG branch and the global conditioning add nothing at step 0
        zero = {k: v for k, v in stage_a.icg.adapter.state_dict().items()
                if "to_v" in k or "time_cond" in k}  # fmt: skip
        assert zero and all(not v.any() for v in zero.values())
    finally:
        stage_a.cleanup()


def test_cli_init_adapter_reaches_the_config(data_dir, tmp_path) -> None:
    app = build_app()
    args = ["train", "align", "--data", str(data_dir), "--out", str(tmp_path / "r"), "--dry-run",
            "--targets", "clicks"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--init-adapter", "zoo:icg-adapter"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["init_adapter"] == "zoo:icg-adapter"
    assert json.loads(CliRunner().invoke(app, args).output)["init_adapter"] == "none"
    result = CliRunner().invoke(app, ["zoo", "train", "icg-adapter", "--out", "x", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["text_dropout"] == 0.7


# ---- drawing ---------------------------------------------------------------------------------
def _draw(pipe: ICGPipeline, **kw) -> np.ndarray:
    out = pipe(
        ["the red cat", "a blue sun"], num_inference_steps=2, output_type="np",
        generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw,
    )  # fmt: skip
    return (np.asarray(out.images) * 255).round().astype(np.uint8)


def test_a_pretrained_adapter_saved_and_reloaded_draws_the_same_bytes(tmp_path) -> None:
    model, parts = _pretrained(tmp_path / "pretrained")
    before = _draw(ICGPipeline(parts["base"], model), prompt="")
    fresh = _parts()
    reloaded = ICGModel.from_pretrained(
        tmp_path / "pretrained", mllm=fresh["mllm"], processor=fresh["processor"]
    )
    after = _draw(ICGPipeline(fresh["base"], reloaded), prompt="")
    assert before.tobytes() == after.tobytes()


def test_an_empty_prompt_with_an_untrained_adapter_is_the_base_model(tmp_path) -> None:
    parts = _parts()
    torch.manual_seed(0)
    model = ICGModel.build(parts["base"].unet, parts["mllm"], parts["processor"],
                           num_meta_tokens=2, base_prompt="a cover for {title}")  # fmt: skip
    drawn = _draw(ICGPipeline(parts["base"], model), prompt="")
    base = StableDiffusionPipeline(**get_dummy_components())
    base.set_progress_bar_config(disable=True)
    plain = base(
        ["", ""], num_inference_steps=2, output_type="np",
        generator=[torch.Generator().manual_seed(i) for i in range(2)],
    ).images  # fmt: skip
    assert drawn.tobytes() == (np.asarray(plain) * 255).round().astype(np.uint8).tobytes()
