"""Stage B: DRaFT-K truncation, gradient coverage, reward rise, exact resume, NaN guard, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from stage_b_fixtures import stage_b_config as _config
from stage_b_fixtures import stage_b_parts as _parts

from icg.checkpoints import list_checkpoints
from icg.config import load_config
from icg.training.common import NonFiniteLossError
from icg.training.curves import CURVES_FILE as CURVES
from icg.training.draft import DraftTrainer, sample_truncation
from icg.training.reward import RewardConfig, run_reward
from icg.training.sampling import start_step, token_drift, truncated_steps


# ---- pure functions ------------------------------------------------------------------------
def test_truncated_steps_are_the_last_k():
    assert list(truncated_steps(10, 1)) == [9]
    assert list(truncated_steps(10, 3)) == [7, 8, 9]
    assert list(truncated_steps(4, 4)) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        truncated_steps(4, 0)
    with pytest.raises(ValueError):
        truncated_steps(4, 5)


def test_sample_truncation_is_one_draw_per_trajectory_in_range():
    g = torch.Generator().manual_seed(0)
    assert {sample_truncation(10, 2, None, g) for _ in range(20)} == {2}
    draws = [sample_truncation(10, 1, 4, torch.Generator().manual_seed(s)) for s in range(200)]
    assert set(draws) == {1, 2, 3, 4}
    assert sample_truncation(3, 1, 9, torch.Generator().manual_seed(0)) <= 3


def test_token_drift_is_zero_at_the_reference_and_pulls_back():
    ref = torch.randn(2, 3, 4)
    x = ref.clone().requires_grad_(True)
    assert token_drift(x, ref) == 0
    y = (ref + 1.0).requires_grad_(True)
    token_drift(y, ref).backward()
    assert (y.grad > 0).all()


# ---- the recipe ----------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2])
def test_only_the_last_k_steps_carry_gradients_and_coverage(stage_b_world, tmp_path, k):
    parts = _parts()
    recipe = DraftTrainer(_config(stage_b_world, tmp_path, truncation_k=k), **parts)
    recipe.setup()
    d = recipe.draw(0)
    d["users"] = ["u0", None]  # one personalized, one cold-start pair
    tokens, _ = recipe.tokens(d["items"], d["users"])
    images, used = recipe.sample(d["items"], tokens, d["noise"], k)
    assert used == list(truncated_steps(3, k))
    titles = [recipe.pool.titles[i] for i in d["items"]]
    reward, _ = recipe.rewards(images, titles, None)
    (-reward.mean()).backward()
    trainable = recipe.trainable_parameters()
    ids = {id(p) for p in trainable}
    for p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0
    frozen = [parts["base"].unet, parts["base"].vae, parts["base"].text_encoder, parts["mllm"]]
    for module in [*frozen, recipe.rewards]:
        for name, p in module.named_parameters():
            if id(p) not in ids:
                assert p.grad is None and not p.requires_grad, name
    recipe.cleanup()


def _fixed_eval(recipe: DraftTrainer, n: int = 3) -> list[dict]:
    out = []
    with torch.no_grad():
        for j in range(n):
            d = recipe.draw(10_000 + j)
            tokens, emb = recipe.tokens(d["items"], d["users"])
            images, _ = recipe.sample(d["items"], tokens, d["noise"], 0)
            _, info = recipe.rewards(
                images, [recipe.pool.titles[i] for i in d["items"]], emb, user_ids=d["users"]
            )
            out.append({k: info[k] for k in recipe.rewards.rewards})
    return out


@pytest.mark.slow  # 50 stage-B steps on the tiny models: over 30 s on 2 cores
def test_combined_reward_rises_over_50_steps(stage_b_world, tmp_path):
    torch.set_num_threads(1)
    cfg = _config(
        stage_b_world, tmp_path, max_steps=50, num_inference_steps=2, checkpoint_every=50,
        learning_rate=3e-2, drift_token_weight=0.0,
    )  # fmt: skip
    recipe = DraftTrainer(cfg, **_parts())
    recipe.setup()
    before = _fixed_eval(recipe)
    recipe.train()
    after = _fixed_eval(recipe)
    multi = recipe.rewards

    def combined(rows):
        from icg.rewards import standardise

        return sum(
            float(
                sum(
                    w * standardise(r[n], multi.stats[n].mean, multi.stats[n].var)
                    for n, w in multi.weights.items()
                ).mean()
            )
            for r in rows
        ) / len(rows)

    first, last = combined(before), combined(after)
    print(f"\nstage B tiny: fixed-probe combined reward {first:.3f} -> {last:.3f}")
    assert last > first + 0.5
    curves = [json.loads(x) for x in (tmp_path / CURVES).read_text().splitlines()]
    assert [c["step"] for c in curves] == list(range(1, 51))
    assert {"reward/aesthetic", "reward/relevance", "reward/preference", "reward/reward"} <= set(
        curves[0]
    )
    recipe.cleanup()


def test_exact_resume_and_atomic_checkpoints(stage_b_world, tmp_path):
    full = run_reward(_config(stage_b_world, tmp_path / "full"), **_parts())
    assert len(full.rewards) == 4
    out = tmp_path / "split"
    first = run_reward(_config(stage_b_world, out, max_steps=2), **_parts())
    resumed = run_reward(_config(stage_b_world, out, max_steps=4), resume=True, **_parts())
    assert resumed.rewards[:2] == first.rewards
    torch.testing.assert_close(
        torch.tensor(resumed.rewards), torch.tensor(full.rewards), atol=1e-5, rtol=0
    )
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [
        "checkpoint-00000002",
        "checkpoint-00000004",
    ]
    ckpt = out / "checkpoints" / "checkpoint-00000004" / "model"
    assert (ckpt / "reward_stats.safetensors").is_file() and (ckpt / "icg_config.json").is_file()
    assert (out / "adapter" / "icg_config.json").is_file()
    steps = [json.loads(x)["step"] for x in (out / CURVES).read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_nan_guard_stops_before_saving(stage_b_world, tmp_path):
    recipe = DraftTrainer(_config(stage_b_world, tmp_path, checkpoint_every=1), **_parts())
    recipe.setup()
    with torch.no_grad():
        recipe.icg.encoder.meta_tokens.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="at step 1; stopped before saving"):
        recipe.train()
    assert list_checkpoints(tmp_path / "checkpoints") == []
    recipe.cleanup()


def test_probe_callback_is_logged_not_learned(stage_b_world, tmp_path):
    seen = []

    def probe(recipe, step):
        images = recipe.generate(["i0", "i1"], ["u0", None], seed=0)
        assert images.dtype.name == "uint8" and images.shape[-1] == 3
        seen.append(step)
        return {"mean_pixel": float(images.mean())}

    cfg = _config(
        stage_b_world, tmp_path, max_steps=2, probe_every=1, drift_denoise_weight=0.5, lora_rank=2
    )
    result = run_reward(cfg, callbacks=[probe], **_parts())
    assert seen == [0, 1, 2] and result.steps == 2
    rows = [json.loads(x) for x in (tmp_path / CURVES).read_text().splitlines()]
    assert [r["step"] for r in rows if "probe" in r] == [0, 1, 2]
    assert all("drift/denoise" in r for r in rows if "probe" not in r)
    assert (tmp_path / "unet_lora.safetensors").is_file()


def test_config_validation(stage_b_world, tmp_path):
    data, init = stage_b_world
    with pytest.raises(ValueError, match="needs --preference"):
        RewardConfig(data=data, init=init, out=tmp_path)
    with pytest.raises(ValueError, match="truncation_k"):
        RewardConfig(data=data, init=init, out=tmp_path, rewards={"aesthetic": 1}, truncation_k=20)
    with pytest.raises(ValueError, match="strength=0.5 runs"):
        RewardConfig(
            data=data, init=init, out=tmp_path, rewards={"aesthetic": 1}, num_inference_steps=4,
            strength=0.5, truncation_k=3,
        )  # fmt: skip
    file = tmp_path / "b.yaml"
    file.write_text("max_steps: 7\ntruncation_k: 2\n")
    cfg = load_config(
        RewardConfig, file, data=data, init=init, out=tmp_path, rewards={"relevance": 1.0}
    )
    assert cfg.max_steps == 7 and cfg.truncation_k == 2 and cfg.rewards == {"relevance": 1.0}


def test_reference_guided_sampling_starts_part_way_from_the_reference(stage_b_world, tmp_path):
    assert [start_step(10, s) for s in (1.0, 0.5, 0.25, 0.01)] == [0, 5, 8, 10]
    parts = _parts()
    recipe = DraftTrainer(
        _config(stage_b_world, tmp_path, num_inference_steps=4, strength=0.5, truncation_k=2),
        **parts,
    )
    recipe.setup()
    d = recipe.draw(0)
    tokens, _ = recipe.tokens(d["items"], d["users"])
    images, used = recipe.sample(d["items"], tokens, d["noise"], 2)
    assert used == [2, 3] and images.requires_grad
    # the item's reference cover shapes the sample: another item's reference changes it
    with torch.no_grad():
        a, _ = recipe.sample(d["items"], tokens, d["noise"], 0)
        recipe.pool.ref_latents[d["items"][0]] = recipe.pool.ref_latents[d["items"][0]] + 1.0
        b, _ = recipe.sample(d["items"], tokens, d["noise"], 0)
    assert not torch.equal(a[0], b[0])
    recipe.cleanup()


def test_load_run_reward_restores_weights_and_statistics(tmp_path):
    import yaml

    from icg.rewards.factory import STATS_FILE, build_rewards, load_run_reward

    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_run_reward(tmp_path)
    weights = {"aesthetic": 1.0, "relevance": 2.0}
    trained = build_rewards(weights)
    for i, name in enumerate(weights):
        trained.stats[name].update(torch.arange(5.0) * (i + 1))
    trained.save_stats(tmp_path / STATS_FILE)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"rewards": weights, "clip": "zoo:clip"}))
    loaded = load_run_reward(tmp_path)
    assert loaded.weights == weights and not loaded.training
    for name in weights:
        torch.testing.assert_close(loaded.stats[name].mean, trained.stats[name].mean)
        torch.testing.assert_close(loaded.stats[name].var, trained.stats[name].var)
    images = torch.rand(2, 3, 64, 64)
    before = loaded.stats["aesthetic"].count.clone()
    loaded(images, ["a", "b"])  # scoring leaves the statistics alone
    torch.testing.assert_close(loaded.stats["aesthetic"].count, before)
