"""Stage B, group-advantage policy gradient: the DDIM policy's densities, the clipped objective,
the KL to stage A, rounds, exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from pydantic import ValidationError
from safetensors.torch import load_file
from stage_b_fixtures import stage_b_config as _config
from stage_b_fixtures import stage_b_parts as _parts
from torch.distributions import Normal, kl_divergence

from icg.matrix import load_recipe
from icg.training.ddim_policy import (
    clipped_policy_loss,
    ddim_step_stats,
    ddim_step_std,
    gaussian_log_prob,
    gaussian_step_kl,
)
from icg.training.grpo import GRPOTrainer, _Joint, policy_advantages, training_order
from icg.training.reward import TRAINERS, run_reward


def _grpo(stage_b_world, out, **kw):
    values = dict(
        trainer="grpo", candidates=3, pairs_per_round=2, steps_per_round=2, max_steps=4,
        batch_size=2, checkpoint_every=2, generation_batch=4, relevance_floor=None,
        grpo_clip_range=0.2,
    )  # fmt: skip
    return _config(stage_b_world, out, **{**values, **kw})


def _scheduler(**kw) -> DDIMScheduler:
    values = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler = DDIMScheduler(**{**values, **kw})
    scheduler.set_timesteps(5)
    return scheduler


# -- the policy's pure functions ---------------------------------------------------------------
def test_step_log_prob_is_the_gaussian_density_averaged_over_dimensions():
    gen = torch.Generator().manual_seed(0)
    x, mean = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen)
    std = torch.tensor([0.1, 0.5, 2.0]).view(3, 1, 1, 1)
    expected = Normal(mean, std.expand_as(mean)).log_prob(x).flatten(1).mean(dim=1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected)


@pytest.mark.parametrize(
    "kind,clip", [("epsilon", False), ("v_prediction", False), ("sample", True)]
)
def test_ddim_step_stats_are_the_diffusers_stochastic_step(kind, clip):
    scheduler = _scheduler(prediction_type=kind, clip_sample=clip, set_alpha_to_one=False)
    gen = torch.Generator().manual_seed(1)
    for t in scheduler.timesteps:
        x, out, z = (torch.randn(2, 4, 6, 6, generator=gen) for _ in range(3))
        mean, std = ddim_step_stats(scheduler, out, t, x, eta=0.7)
        step = scheduler.step(out, t, x, eta=0.7, variance_noise=z).prev_sample
        torch.testing.assert_close(mean + std * z, step)


def test_ddim_step_stats_take_one_timestep_per_row():
    scheduler = _scheduler(set_alpha_to_one=False)
    gen = torch.Generator().manual_seed(2)
    x, out = torch.randn(3, 4, 6, 6, generator=gen), torch.randn(3, 4, 6, 6, generator=gen)
    t = scheduler.timesteps[[0, 2, 4]]
    mean, std = ddim_step_stats(scheduler, out, t, x, eta=1.0)
    assert std.shape == (3, 1, 1, 1)
    for row in range(3):
        m, s = ddim_step_stats(scheduler, out[row : row + 1], t[row], x[row : row + 1], eta=1.0)
        torch.testing.assert_close(mean[row : row + 1], m)
        torch.testing.assert_close(std[row : row + 1], s)


@pytest.mark.parametrize(
    "kw,last_is_deterministic",
    [
        (dict(set_alpha_to_one=True, steps_offset=1), True),  # onto alpha_bar = 1
        (dict(set_alpha_to_one=False, steps_offset=0), True),  # from t = 0 onto alpha_bar_0
        (dict(set_alpha_to_one=False, steps_offset=1), False),  # SD's schedulers
    ],
)
def test_which_steps_are_stochastic(kw, last_is_deterministic):
    scheduler = _scheduler(**kw)
    std = ddim_step_std(scheduler, scheduler.timesteps, eta=1.0)
    assert (std[:-1] > 0).all()
    assert (std[-1] == 0) == last_is_deterministic


def test_closed_form_kl_is_torch_kl_between_equal_variance_gaussians():
    gen = torch.Generator().manual_seed(3)
    mean, ref = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    std = torch.tensor([0.3, 1.5]).view(2, 1, 1, 1)
    expected = kl_divergence(Normal(mean, std.expand_as(mean)), Normal(ref, std.expand_as(ref)))
    torch.testing.assert_close(gaussian_step_kl(mean, ref, std), expected.flatten(1).mean(dim=1))
    assert torch.equal(gaussian_step_kl(mean, mean, std), torch.zeros(2))


def test_clipped_objective_value_and_gradient():
    # ratios 1.5, 0.5, 0.5, 1.05 against advantages +1, -1, +1, -2 with a clip range of 0.1
    ratios = torch.tensor([1.5, 0.5, 0.5, 1.05])
    log_prob = ratios.log().requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0, 1.0, -2.0])
    loss, info = clipped_policy_loss(log_prob, torch.zeros(4), advantages, clip_range=0.1)
    # per row max(-A r, -A clip(r)): -1.1 (clipped), 0.9 (clipped), -0.5, 2.1
    torch.testing.assert_close(loss, torch.tensor((-1.1 + 0.9 - 0.5 + 2.1) / 4))
    loss.backward()
    # clipped rows carry no gradient; the others d(-A r)/d log r / 4 = -A r / 4
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, 0.0, -0.5 / 4, 2.1 / 4]))
    assert info["clip_fraction"] == 0.75  # 1.5, 0.5, 0.5 left [0.9, 1.1]; 1.05 did not
    assert math.isclose(info["ratio"], float(ratios.mean()), rel_tol=1e-6)


def test_advantages_are_per_pair_clipped_and_never_positive_when_ineligible():
    scores = torch.tensor([[0.0, 1.0, 2.0], [10.0, 30.0, 25.0]])
    eligible = torch.tensor([[True, True, True], [True, False, True]])
    adv = policy_advantages(scores, eligible, clip=1.0).view(2, 3)
    assert torch.equal(adv[0], torch.tensor([-1.0, 0.0, 1.0]))  # +-1.22 clipped to +-1
    assert adv[1, 1] == 0  # the best draw, but below the relevance floor: not reinforced
    assert adv[1, 0] == -1.0 and 0 < adv[1, 2] <= 1.0


def test_training_order_trains_a_fraction_of_each_trajectorys_steps():
    order = training_order(4, [1, 2, 3, 4], 0.5, 12, torch.Generator().manual_seed(0))
    assert order.shape == (12, 2)
    first_pass = order[:8]  # every (trajectory, step) sample once, 2 steps per trajectory
    for trajectory in range(4):
        steps = first_pass[first_pass[:, 0] == trajectory, 1].tolist()
        assert len(steps) == len(set(steps)) == 2 and set(steps) <= {1, 2, 3, 4}
    assert {tuple(r) for r in order[8:].tolist()} <= {tuple(r) for r in first_pass.tolist()}
    again = training_order(4, [1, 2, 3, 4], 0.5, 12, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)


def test_eta_must_be_in_zero_one(stage_b_world, tmp_path):
    for eta in (0.0, -0.5, 1.5):
        with pytest.raises(ValidationError, match=r"(?s)grpo_eta.*expected 0 < grpo_eta <= 1"):
            _grpo(stage_b_world, tmp_path, grpo_eta=eta)
    assert _grpo(stage_b_world, tmp_path, grpo_eta=0.3).grpo_eta == 0.3
    assert TRAINERS["grpo"] is GRPOTrainer


# -- the trainer on tiny models ----------------------------------------------------------------
def test_rollout_without_noise_is_the_inference_chain(stage_b_world, tmp_path):
    """With (almost) no noise the rollout is the deterministic DDIM chain inference samples
    with: CFG and user guidance go through the same code."""
    cfg = _grpo(stage_b_world, tmp_path, grpo_eta=1e-6, user_guidance=2.0)
    recipe = GRPOTrainer(cfg, **_parts())
    recipe.setup()
    items, users = sorted(recipe.pool.titles)[:2], [recipe.pool.pairs.at[0, "user_id"], None]
    h = recipe.pool.size // recipe.pool.vae_scale
    noise = torch.randn(2, recipe.unet.config.in_channels, h, h)
    with torch.no_grad():
        tokens, _, without = recipe.policy_tokens(items, users)
        expected, _ = recipe.sample_latents(items, tokens, noise, 0, without)
        path, log_probs, timesteps = recipe.rollout(
            items, tokens, without, noise, torch.zeros(2, 3, *noise.shape[1:])
        )
    assert path.shape == (2, 4, *noise.shape[1:]) and log_probs.shape == (2, 3)
    assert len(timesteps) == 3
    torch.testing.assert_close(path[:, -1], expected, atol=1e-4, rtol=1e-4)
    recipe.cleanup()


def test_kl_is_zero_at_stage_a_and_positive_after_a_step(stage_b_world, tmp_path):
    cfg = _grpo(stage_b_world, tmp_path, cold_start_fraction=0.0, user_guidance=2.0)
    recipe = GRPOTrainer(cfg, **_parts())
    recipe.setup()
    buffer, logs = recipe.collect(0)
    assert buffer.latents.shape[:2] == (6, 4) and buffer.order.shape == (4, 2)
    assert torch.isfinite(buffer.log_probs).all() and "round/reward" in logs
    torch.testing.assert_close(buffer.advantages.view(2, 3).mean(dim=1), torch.zeros(2))
    loss, logs = recipe.ranked_loss(buffer, 0)
    assert logs["loss/kl"] == 0.0  # the policy is stage A
    assert abs(logs["policy/ratio"] - 1) < 1e-4  # the rollout's densities, recomputed
    recipe.optimizer_step(loss, recipe.trainable_parameters())
    _, logs = recipe.ranked_loss(buffer, 1)
    assert logs["loss/kl"] > 0
    recipe.cleanup()


def test_one_round_changes_the_adapter(stage_b_world, tmp_path):
    recipe = GRPOTrainer(_grpo(stage_b_world, tmp_path, max_steps=2), **_parts())
    recipe.setup()
    recipe.train()
    assert recipe.step == 2
    adapter = {name: p for name, p in recipe.icg.named_parameters() if name.startswith("adapter.")}
    assert adapter and adapter.keys() <= recipe.reference.keys()
    assert any(not torch.equal(p, recipe.reference[name]) for name, p in adapter.items())
    recipe.cleanup()


def test_grpo_rounds_resume_exactly(stage_b_world, tmp_path):
    full = run_reward(_grpo(stage_b_world, tmp_path / "full"), **_parts())
    out = tmp_path / "split"
    run_reward(_grpo(stage_b_world, out, max_steps=2), **_parts())
    resumed = run_reward(_grpo(stage_b_world, out, max_steps=4), resume=True, **_parts())
    assert resumed.steps == full.steps == 4 and len(full.rewards) == 2
    torch.testing.assert_close(
        torch.tensor(resumed.rewards), torch.tensor(full.rewards), atol=1e-5, rtol=0
    )
    weights = sorted((tmp_path / "full" / "adapter").rglob("*.safetensors"))
    assert weights
    for path in weights:
        twin = out / "adapter" / path.relative_to(tmp_path / "full" / "adapter")
        a, b = load_file(path), load_file(twin)
        assert a.keys() == b.keys()
        for key in a:
            # float-level, as the DRaFT resume test; one Adam step at lr=1e-2 moves them far more
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_the_grpo_recipe_validates_for_the_matrix():
    docs = Path(__file__).resolve().parents[1] / "docs" / "recipes"
    recipe = load_recipe(docs / "grpo.yaml")
    cfg = recipe.reward_config(0)
    assert cfg["trainer"] == "grpo" and recipe.align_config(0) == load_recipe(
        docs / "shipped.yaml"
    ).align_config(0)  # the same stage A as the shipped recipe: the matrix trains it once
    # one pass over each round's (trajectory, step) samples
    samples = cfg["pairs_per_round"] * cfg["candidates"] * cfg["num_inference_steps"] // 2
    assert cfg["grpo_timestep_fraction"] == 0.5
    assert cfg["steps_per_round"] * cfg["batch_size"] == samples


def test_the_reference_policy_names_parameters_that_exist(stage_b_world, tmp_path):
    """`functional_call` ignores names it does not know: every reference key must resolve, and
    a UNet LoRA is off (B = 0) in the reference."""
    recipe = GRPOTrainer(_grpo(stage_b_world, tmp_path, lora_rank=2), **_parts())
    recipe.setup()
    names = {n for n, _ in _Joint(recipe.icg, recipe.unet, lambda: None).named_parameters()}
    assert recipe.reference_policy.keys() <= names
    lora = [k for k in recipe.reference_policy if k.startswith("unet.")]
    assert lora and all("lora_B" in k for k in lora)
    assert all(not recipe.reference_policy[k].any() for k in lora)
    recipe.cleanup()
