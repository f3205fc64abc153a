"""coverworld-tiny `sd`: recipe pieces on tiny inputs, and the shipped folder in plain diffusers.

The shipped-weight tests are marked `real_weights`; the folder ships with the package, so they
load it directly and a missing or broken one fails them. The gate tests use small fresh samples,
so their thresholds are the recipe's gates minus two binomial standard errors at the gate value
(accuracies) or two standard errors of the mean (PSNR); the numbers measured on 512 fresh titles
live in `weights/sd/gates.json`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from icg.checkpoints import latest_checkpoint, load_trainer_state
from icg.world.attributes import STYLE_DIMS
from icg.zoo import REGISTRY
from icg.zoo.recipes import sd
from icg.zoo.recipes.sd import models, pixels, state, unet, vae

WEIGHTS = REGISTRY["sd"].path


def _binomial_tolerance(p: float, n: int) -> float:
    """Two standard errors of an accuracy measured on n samples when the truth is p."""
    return 2.0 * math.sqrt(p * (1.0 - p) / n)


# ----------------------------------------------------------------------------- pure pieces


def test_psnr_of_a_known_error() -> None:
    a = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    b = a.copy()
    b[1] += 26  # error 26/255 ~ 0.102 -> 19.83 dB
    out = pixels.psnr(a, b)
    assert out[0] == pytest.approx(120.0)  # identical images hit the 1e-12 floor
    assert out[1] == pytest.approx(-20 * math.log10(26 / 255), abs=1e-9)


def test_min_snr_weight_is_min_snr_gamma_over_snr_plus_one() -> None:
    snr = torch.tensor([0.1, 5.0, 100.0])
    w = unet.min_snr_weight(snr, gamma=5.0)
    torch.testing.assert_close(w, torch.tensor([0.1 / 1.1, 5.0 / 6.0, 5.0 / 101.0]))
    torch.testing.assert_close(unet.min_snr_weight(snr, gamma=0.0), torch.ones(3))


def test_vae_batches_are_a_pure_function_of_the_step() -> None:
    cfg = sd.SDRecipeConfig(vae_steps=10, vae_full_steps=2, vae_batch=4, vae_full_batch=3)
    crops = vae.vae_batch(0, cfg)
    assert crops.shape == (4, cfg.vae_crop, cfg.vae_crop, 3) and crops.dtype == np.uint8
    np.testing.assert_array_equal(crops, vae.vae_batch(0, cfg))
    assert not np.array_equal(crops, vae.vae_batch(1, cfg))
    assert vae.vae_batch(8, cfg).shape == (3, 64, 64, 3)  # the last steps see whole covers


def test_phase_checkpoints_keep_the_newest_in_the_shared_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = sd.SDRecipeConfig(vae_channels=(8, 8), image_size=16)
    model = models.build_vae(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state.save_phase(tmp_path, 1, opt, 1.5, [{"step": 1}], vae=model)
    state.save_phase(tmp_path, 2, opt, 3.0, [{"step": 1}, {"step": 2}], vae=model)
    (tmp_path / ".tmp-checkpoint-crashed").mkdir()  # a crash mid-write leaves a temp folder
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "checkpoint-00000002"
    assert load_trainer_state(latest) == {
        "step": 2,
        "wall_s": 3.0,
        "history": [{"step": 1}, {"step": 2}],
    }
    assert (latest / "vae" / "config.json").is_file()
    assert (latest / "optimizer.safetensors").is_file()
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-00000002"]
    assert latest_checkpoint(tmp_path / "none") is None


def test_config_validates_and_loads_through_the_shared_loader(tmp_path: Path) -> None:
    from icg.config import load_config

    file = tmp_path / "sd.yaml"
    file.write_text("unet_steps: 7\nvae_channels: [8, 16]\n")
    cfg = load_config(sd.SDRecipeConfig, file, threads=2)
    assert (cfg.unet_steps, cfg.vae_channels, cfg.threads, cfg.latent_size) == (7, (8, 16), 2, 32)
    with pytest.raises(ValueError, match="cfg_drop"):
        sd.SDRecipeConfig(cfg_drop=1.0)
    with pytest.raises(ValueError, match="image_size=62"):
        sd.SDRecipeConfig(image_size=62)
    with pytest.raises(ValueError, match="unet_lr"):
        sd.SDRecipeConfig(unet_lr=1e-3)  # one naming scheme: learning_rate


def test_fresh_vae_maps_64px_to_16x16x8_with_small_posterior_noise() -> None:
    torch.manual_seed(0)
    vae = models.build_vae(sd.SDRecipeConfig()).eval()
    x = torch.zeros(2, 3, 64, 64)
    with torch.no_grad():
        post = vae.encode(x).latent_dist
        assert post.mean.shape == (2, 8, 16, 16)
        assert post.std.max().item() < 0.01  # exp(VAE_INIT_LOGVAR / 2) = 0.0067
        assert vae.decode(post.mode()).sample.shape == (2, 3, 64, 64)


def test_chroma_loss_sees_a_muted_hue_shift_that_rgb_losses_barely_see() -> None:
    grey = torch.full((1, 3, 8, 8), 0.0)
    green = grey + torch.tensor([-0.04, 0.04, -0.04])[None, :, None, None]  # a muted green
    lavender = grey + torch.tensor([0.04, -0.04, 0.04])[None, :, None, None]
    assert pixels.chroma(green).shape == (1, 2, 2, 2)
    assert pixels.chroma_l1(grey, grey + 0.3) < 1e-6  # lightness alone is not colour
    assert pixels.chroma_l1(green, lavender) > 0.04  # the hue flips: Cb and Cr change sign
    torch.manual_seed(0)
    vae_model = models.build_vae(sd.SDRecipeConfig()).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    plain, _ = vae.vae_loss(
        vae_model, x, sd.SDRecipeConfig(vae_kl_weight=0.0, vae_chroma_weight=0.0)
    )
    torch.manual_seed(0)
    vae_model = models.build_vae(sd.SDRecipeConfig()).eval()
    weighted, _ = vae.vae_loss(
        vae_model, x, sd.SDRecipeConfig(vae_kl_weight=0.0, vae_chroma_weight=1.0)
    )
    assert weighted > plain


def test_unet_size_and_sampler_schedule() -> None:
    cfg = sd.SDRecipeConfig()
    unet = models.build_unet(cfg, cross_attention_dim=64)
    n = sum(p.numel() for p in unet.parameters())
    assert 1_000_000 <= n <= 4_000_000
    sampler = models.build_sample_scheduler(cfg)
    sampler.set_timesteps(25)
    assert sampler.timesteps[0] == cfg.num_train_timesteps - 1  # trailing: start at pure noise
    assert sampler.config.prediction_type == "v_prediction"
    train = models.build_train_scheduler(cfg)
    assert train.alphas_cumprod[-1] < 1e-6  # (near) zero terminal SNR


def test_unet_batches_and_loss_are_seeded() -> None:
    torch.manual_seed(0)
    cfg = sd.SDRecipeConfig(unet_batch=4, cfg_drop=0.5)
    data = {
        "latents": torch.randn(10, cfg.latent_channels, 16, 16),
        "text": torch.randn(10, 32, 64).half(),
        "uncond": torch.zeros(32, 64),
    }
    a = unet.unet_batch(3, 0, data, cfg, 1000)
    b = unet.unet_batch(3, 0, data, cfg, 1000)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    dropped = (a["text"] == 0).all(dim=(1, 2))
    assert 0 < int(dropped.sum()) < 4  # cfg_drop=0.5 of 4 with this seed
    model = models.build_unet(cfg, cross_attention_dim=64)
    loss = unet.unet_loss(model, models.build_train_scheduler(cfg), a, gamma=5.0)
    assert loss.ndim == 0 and torch.isfinite(loss)


# ----------------------------------------------------------------------------- shipped folder


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(str(WEIGHTS))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.real_weights
def test_stock_pipeline_loads_and_draws_a_cover(pipe) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    index = json.loads((WEIGHTS / "model_index.json").read_text())
    assert index["requires_safety_checker"] is False
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.unet, UNet2DConditionModel)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 64
    assert not list(WEIGHTS.rglob("*.bin")), "weights must be safetensors"

    out = pipe(
        "a cover for The Crimson Orb",
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3)
    assert np.isfinite(out).all() and out.std() > 0.02


@pytest.mark.real_weights
def test_recipe_prompt_embeddings_match_the_pipeline(pipe) -> None:
    prompts = sd.config.prompts_for(["The Crimson Orb", "hidden tales of the teal ring!"])
    ours = unet.encode_prompts(pipe.text_encoder, pipe.tokenizer, prompts)
    theirs, _ = pipe.encode_prompt(prompts, torch.device("cpu"), 1, False)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(
        unet.encode_prompts(pipe.text_encoder, pipe.tokenizer, [""])[0],
        pipe.encode_prompt([""], torch.device("cpu"), 1, False)[0][0],
    )


@pytest.mark.real_weights
def test_vae_psnr_on_fresh_renders(pipe) -> None:
    from icg.zoo import evaldata

    images = evaldata.fresh_covers(128, k=17).images
    values = pixels.psnr(images, pixels.reconstruct(pipe.vae, images))
    tolerance = 2.0 * values.std() / math.sqrt(len(values))
    assert values.mean() >= sd.THRESHOLDS["roundtrip_psnr"] - tolerance, values.mean()


def _shipped_gates_passed() -> bool:
    file = WEIGHTS / "gates.json"
    return file.is_file() and bool(json.loads(file.read_text()).get("passed"))


@pytest.mark.real_weights
@pytest.mark.slow  # the shipped sd draws covers for 64 fresh titles: minutes on 2 cores
def test_gates_hold_on_a_small_fresh_world(tmp_path: Path) -> None:
    from icg.world.config import WorldConfig
    from icg.world.generate import generate_world

    n = 64
    world = generate_world(
        tmp_path / "w", WorldConfig(seed=424_242, n_items=n, n_users=4, n_impressions=100)
    )
    metrics = sd.evaluate(WEIGHTS, world, limit=n)
    assert metrics["n_titles"] == n
    plain = [metrics[f"plain_style_{d}"] for d in STYLE_DIMS]  # the style nobody asked for
    assert all(0.0 <= v <= 1.0 for v in plain), plain
    for key in ("prompt_motif", "prompt_palette", "prompt_style"):
        gate = sd.THRESHOLDS[key]
        assert metrics[key] >= gate - _binomial_tolerance(gate, n), (key, metrics)
    for kind in ("motif", "palette"):  # the titles bound the title prompt, not the class prompt
        ceiling = metrics[f"prompt_{kind}_ceiling"]
        assert 0.5 < ceiling <= 1.0, metrics
        assert metrics[f"prompt_{kind}"] <= ceiling + _binomial_tolerance(ceiling, n), metrics
        gate = sd.THRESHOLDS[f"prompt_{kind}"]
        assert metrics[f"class_prompt_{kind}"] >= gate - _binomial_tolerance(gate, n), metrics
    assert metrics["roundtrip_psnr"] >= sd.THRESHOLDS["roundtrip_psnr"] - 1.0, metrics


@pytest.mark.real_weights
def test_shipped_folder_records_its_gates() -> None:
    gates = json.loads((WEIGHTS / "gates.json").read_text())
    assert _shipped_gates_passed(), gates["metrics"]
    assert gates["name"] == "sd" and set(gates["thresholds"]) <= set(gates["metrics"])
    assert gates["parameters"] > 0 and gates["wall_time_s"] > 0
    assert (WEIGHTS / "README.md").is_file()
    size = sum(f.stat().st_size for f in WEIGHTS.rglob("*") if f.is_file())
    assert size < 30 * 2**20


def test_captions_name_a_subset_of_the_true_style_levels() -> None:
    from icg.zoo.recipes.clip.texts import style_phrase
    from icg.zoo.recipes.sd.config import SDRecipeConfig, caption_for

    levels = np.array([0, 2, 1, 1, 2, 0])
    truth = {style_phrase(d, int(lv)) for d, lv in zip(STYLE_DIMS, levels, strict=True)}
    cfg = SDRecipeConfig(style_caption_rate=0.75)
    rng = np.random.default_rng(0)
    captions = [caption_for("The Azure Star", levels, rng, cfg) for _ in range(400)]
    assert captions == [
        caption_for("The Azure Star", levels, r, cfg)
        for r in [np.random.default_rng(0)]
        for _ in range(400)
    ]
    plain = [c for c in captions if c == "a cover for The Azure Star"]
    assert 0.25 - 0.1 < len(plain) / 400 < 0.25 + 0.1
    for c in captions:
        assert c.startswith("a cover for The Azure Star")
        words = c.split(", ")[1:]
        assert set(words) <= truth  # only the cover's own levels, each named at most once
        assert len(words) == len(set(words))
    assert {w for c in captions for w in c.split(", ")[1:]} == truth  # every dimension appears
    rng = np.random.default_rng(0)
    off = SDRecipeConfig(style_caption_rate=0.0)
    assert {caption_for("x", levels, rng, off) for _ in range(20)} == {"a cover for x"}


@pytest.mark.real_weights
def test_vae_from_adopts_a_published_vae_and_text_tower(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    from icg.zoo.recipes.sd.recipe import adopt_vae

    work = tmp_path / "work"
    work.mkdir()
    st = state.RecipeState(work / "state.json")
    adopt_vae(work, WEIGHTS, st)
    shipped = AutoencoderKL.from_pretrained(str(WEIGHTS / "vae"))
    for name in ("vae", "vae_ft"):
        copy = AutoencoderKL.from_pretrained(str(work / name))
        theirs = shipped.state_dict()
        for k, v in copy.state_dict().items():
            torch.testing.assert_close(v, theirs[k], msg=k)
    assert st["vae_done"] and st["decoder_done"] and st["vae_from"] == str(WEIGHTS)
    text_encoder, tokenizer = unet.frozen_text_tower(work, tmp_path / "no-clip-needed")
    from transformers import CLIPTextModel, CLIPTokenizer

    shipped_text = CLIPTextModel.from_pretrained(str(WEIGHTS / "text_encoder")).state_dict()
    for k, v in text_encoder.state_dict().items():
        torch.testing.assert_close(v, shipped_text[k], msg=k)
    shipped_tok = CLIPTokenizer.from_pretrained(str(WEIGHTS / "tokenizer"))
    assert tokenizer("a cover for x").input_ids == shipped_tok("a cover for x").input_ids
    with pytest.raises(FileNotFoundError, match="not a StableDiffusionPipeline"):
        adopt_vae(tmp_path / "w2", tmp_path, state.RecipeState(tmp_path / "s.json"))
