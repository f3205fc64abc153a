"""Stage B, reward-ranked: group advantages, selection, the relevance floor, rounds, exact resume."""

from __future__ import annotations

import json

import pytest
import torch
from stage_b_fixtures import stage_b_config as _config
from stage_b_fixtures import stage_b_parts as _parts

from icg.checkpoints import list_checkpoints
from icg.training.curves import CURVES_FILE
from icg.training.ranked import RankedTrainer, group_advantages, selection_weights
from icg.training.reward import run_reward


def _ranked(stage_b_world, out, **kw):
    values = dict(
        trainer="ranked", candidates=3, pairs_per_round=2, steps_per_round=2, max_steps=4,
        checkpoint_every=2, generation_batch=4, relevance_floor=None,
    )  # fmt: skip
    return _config(stage_b_world, out, **{**values, **kw})


def test_group_advantages_standardise_each_pair_alone():
    scores = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0], [0.0, 4.0, 8.0]])
    adv = group_advantages(scores)
    torch.testing.assert_close(adv[0], adv[2])  # an easy item and a hard one rank alike
    assert torch.equal(adv[1], torch.zeros(3))
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(3))


def test_best_selection_keeps_the_best_eligible_draw_per_pair():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1], [1.0, 2.0, 3.0]])
    eligible = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    weights = selection_weights(scores, eligible, "best")
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.equal(weights, expected)


def test_first_selection_ignores_the_reward_but_not_eligibility():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1], [1.0, 2.0, 3.0]])
    eligible = torch.tensor([[False, True, True], [False, False, False], [True, True, True]])
    weights = selection_weights(scores, eligible, "first")
    expected = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.equal(weights, expected)
    with pytest.raises(ValueError, match="'first'"):
        selection_weights(scores, eligible, "random")


def test_advantage_selection_is_clipped_positive_and_eligible_only():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    eligible = torch.tensor([[True, True, True, False]])
    weights = selection_weights(scores, eligible, "advantage", clip=0.3)
    assert weights[0, 0] == 0 and weights[0, 1] == 0  # below the pair's mean
    assert weights[0, 2] == 0.3 and weights[0, 3] == 0  # clipped; ineligible


def test_a_round_is_a_function_of_seed_and_round(stage_b_world, tmp_path):
    recipe = RankedTrainer(_ranked(stage_b_world, tmp_path), **_parts())
    recipe.setup()
    buffer, logs = recipe.collect(0)
    again, _ = recipe.collect(0)
    assert buffer.items == again.items and torch.equal(buffer.latents, again.latents)
    assert len(buffer.items) == 2 and torch.equal(buffer.weights, torch.ones(2))  # one per pair
    assert 0 <= logs["round/eligible"] <= 1
    other, _ = recipe.collect(1)
    assert not torch.equal(other.latents, buffer.latents)
    recipe.cleanup()


def test_relevance_floor_makes_weak_draws_ineligible(stage_b_world, tmp_path):
    recipe = RankedTrainer(_ranked(stage_b_world, tmp_path, relevance_floor=0.5), **_parts())
    recipe.setup()
    reference = recipe.reference_relevance(sorted(recipe.pool.titles))
    assert reference.shape == (3,) and torch.isfinite(reference).all()
    recipe._reference_relevance = dict.fromkeys(recipe.pool.titles, 1e6)  # unreachable references
    buffer, logs = recipe.collect(0)
    assert buffer.items == [] and logs["round/eligible"] == 0 and logs["round/pairs_used"] == 0
    recipe.cleanup()


def test_ranked_step_trains_every_icg_part(stage_b_world, tmp_path):
    recipe = RankedTrainer(_ranked(stage_b_world, tmp_path, cold_start_fraction=0.0), **_parts())
    recipe.setup()
    buffer, _ = recipe.collect(0)
    loss, logs = recipe.ranked_loss(buffer, 0)
    loss.backward()
    assert logs["loss/denoise"] > 0
    for p in recipe.trainable_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    recipe.cleanup()


def test_ranked_rounds_resume_exactly(stage_b_world, tmp_path):
    full = run_reward(_ranked(stage_b_world, tmp_path / "full"), **_parts())
    out = tmp_path / "split"
    run_reward(_ranked(stage_b_world, out, max_steps=2), **_parts())
    resumed = run_reward(_ranked(stage_b_world, out, max_steps=4), resume=True, **_parts())
    assert resumed.steps == full.steps == 4
    torch.testing.assert_close(torch.tensor(resumed.rewards), torch.tensor(full.rewards))
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [
        "checkpoint-00000002",
        "checkpoint-00000004",
    ]
    rows = [json.loads(x) for x in (out / CURVES_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows if "round/reward" in r] == [0, 2]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_guided_denoising_loss_trains_the_conditional_branch_only():
    from diffusers import DDPMScheduler
    from model_fixtures import perturb_, tiny_icg

    from icg.training.common import denoising_loss

    base, model = tiny_icg()
    perturb_(model)
    model.adapter.install(base.unet)
    sched = DDPMScheduler(num_train_timesteps=100)
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t, text, uncond = torch.tensor([10, 50]), torch.randn(2, 5, 32), torch.zeros(2, 5, 32)
    tokens = model(torch.randn(2, 3, model.encoder.config.hidden_size)).detach()
    args = (base.unet, sched, latents, noise, t, text, tokens)
    plain = denoising_loss(*args)
    assert torch.equal(denoising_loss(*args, guidance_scale=1.0, uncond_states=uncond), plain)
    guided = denoising_loss(*args, guidance_scale=3.0, uncond_states=uncond)
    assert not torch.isclose(guided, plain)
    tokens.requires_grad_(True)
    denoising_loss(*args, guidance_scale=3.0, uncond_states=uncond).backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
