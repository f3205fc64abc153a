"""Stage B, DiffusionNFT: the optimality probability, the negative-aware loss, the old policy
through functional_call, one round's update, and exact resume (with the soft-updated old policy)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from stage_b_fixtures import stage_b_config as _config
from stage_b_fixtures import stage_b_parts as _parts

from icg.training.curves import CURVES_FILE
from icg.training.nft import NFTTrainer, nft_loss, optimality_probability
from icg.training.reward import run_reward, trainer_class


def _nft(stage_b_world, out, **kw):
    values = dict(
        trainer="nft", candidates=3, pairs_per_round=2, steps_per_round=2, max_steps=4,
        checkpoint_every=2, generation_batch=6, relevance_floor=None, cold_start_fraction=0.0,
    )  # fmt: skip
    return _config(stage_b_world, out, **{**values, **kw})


# -- the optimality probability ----------------------------------------------------------------
def test_optimality_probability_is_the_clipped_pair_advantage_mapped_to_0_1():
    scores = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 10.0], [0.0, 4.0, 8.0]])
    eligible = torch.ones(3, 3, dtype=torch.bool)
    r = optimality_probability(scores, eligible, clip=5.0)
    a = (1.5**0.5) / 5  # |A| of the outer draws: sqrt(3/2) population standard deviations
    expected = torch.tensor([[0.5 - a / 2, 0.5, 0.5 + a / 2]])
    torch.testing.assert_close(r[0:1], expected)
    torch.testing.assert_close(r[2], r[0])  # an easy item and a hard one rank alike
    assert torch.equal(r[1], torch.full((3,), 0.5))  # no spread: no signal
    saturated = optimality_probability(scores, eligible, clip=0.5)
    assert saturated[0].tolist() == [0.0, 0.5, 1.0]


def test_a_draw_below_the_hard_constraints_is_a_negative():
    scores = torch.tensor([[0.0, 1.0, 5.0]])
    eligible = torch.tensor([[True, True, False]])
    r = optimality_probability(scores, eligible)
    assert r[0, 2] == 0 and 0 < r[0, 0] < 0.5 < 1.0


# -- the loss on synthetic tensors -------------------------------------------------------------
def _tensors(seed: int = 0, batch: int = 3):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 2, 4, 4)
    return tuple(torch.randn(shape, generator=gen) for _ in range(2))  # old, target


def _grad(old, target, r, beta, adaptive, pred=None):
    pred = (old.clone() if pred is None else pred.clone()).requires_grad_(True)
    nft_loss(pred, old, target, r, beta, adaptive).backward()
    return pred.grad


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
def test_gradient_at_the_old_policy_is_the_closed_form(beta, adaptive):
    old, target = _tensors()
    r = torch.tensor([1.0, 0.3, 0.5])
    b, d = old.shape[0], old[0].numel()
    err = old - target
    expected = 2 * (2 * r - 1).view(-1, 1, 1, 1) * err / (b * d)
    if adaptive:
        expected = expected / err.abs().flatten(1).mean(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(_grad(old, target, r, beta, adaptive), expected)
    neutral = _grad(old, target, torch.full((3,), 0.5), beta, adaptive)
    torch.testing.assert_close(neutral, torch.zeros_like(err), rtol=0, atol=1e-7)


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_r1_pulls_the_prediction_to_the_target_and_r0_pushes_it_away(beta):
    old, target = _tensors(seed=1)
    pred = old + 0.1 * torch.randn(old.shape, generator=torch.Generator().manual_seed(2))
    distance = (pred - target).pow(2).sum()
    for r, closer in ((1.0, True), (0.0, False)):
        grad = _grad(old, target, torch.full((3,), r), beta, False, pred)
        moved = pred - 1e-2 * grad / grad.norm()
        assert ((moved - target).pow(2).sum() < distance) == closer
    # r = 1 at beta = 1: the positive branch is the current policy, plain denoising regression
    plain = torch.nn.functional.mse_loss(pred, target)
    torch.testing.assert_close(nft_loss(pred, old, target, torch.ones(3), 1.0, False), plain)


def test_the_old_prediction_carries_no_gradient():
    old, target = _tensors()
    old.requires_grad_(True)
    pred = (old.detach() + 0.1).requires_grad_(True)
    nft_loss(pred, old, target, torch.full((3,), 0.8)).backward()
    assert old.grad is None and pred.grad is not None


# -- the trainer -------------------------------------------------------------------------------
def test_nft_is_registered_and_refuses_batches_larger_than_a_round(stage_b_world, tmp_path):
    assert trainer_class("nft") is NFTTrainer
    with pytest.raises(ValueError, match="batch_size: nft trains on distinct draws"):
        _nft(stage_b_world, tmp_path, batch_size=7)  # 2 pairs x 3 candidates


def test_old_policy_runs_through_functional_call(stage_b_world, tmp_path):
    trainer = NFTTrainer(_nft(stage_b_world, tmp_path, batch_size=6), **_parts())
    trainer.setup()
    buffer, logs = trainer.collect(0)
    assert len(buffer.items) == 6 and buffer.r.shape == (6,)  # every draw is kept
    assert ((buffer.r >= 0) & (buffer.r <= 1)).all() and 0 <= logs["round/positive"] <= 1
    x = torch.randn(2, 4, 4, 4)
    t, text = torch.tensor([10, 500]), trainer.pool.text_states(buffer.items[:2])
    args = (buffer.items[:2], buffer.users[:2], x, t, text)
    with torch.no_grad():
        before, _ = trainer.predict(*args)
        as_old, _ = trainer.predict_with(trainer.old, *args)
    assert torch.equal(before, as_old)  # at the round's start the old policy is the current one
    loss, step_logs = trainer.step_loss(buffer, 0)
    trainer.optimizer_step(loss, trainer.trainable_parameters())
    assert step_logs["loss/nft"] > 0 and step_logs["nft/old_deviation"] == 0
    with torch.no_grad():
        after, _ = trainer.predict(*args)
        still_old, _ = trainer.predict_with(trainer.old, *args)
        stage_a, _ = trainer.predict_with(trainer.stage_a, *args)
    assert not torch.equal(after, before)
    assert torch.equal(still_old, before)  # the swap left the trained weights untouched
    torch.testing.assert_close(stage_a, before)  # stage A is where this run started
    trainer.cleanup()


def test_soft_update_folds_the_weights_into_the_old_policy_once_a_round(stage_b_world, tmp_path):
    trainer = NFTTrainer(_nft(stage_b_world, tmp_path, nft_old_decay=0.75), **_parts())
    trainer.setup()
    start = trainer.current_parameters()
    with torch.no_grad():
        for p in trainer.guards.named.values():
            p.add_(1.0)
    trainer.update_old_policy(0)  # round 0's old policy is stage A
    assert all(torch.equal(trainer.old[n], v) for n, v in start.items())
    trainer.update_old_policy(1)
    for n, v in start.items():
        torch.testing.assert_close(trainer.old[n], v + 0.25)  # 0.75 old + 0.25 (old + 1)
    trainer.update_old_policy(1)  # once per round
    assert all(torch.allclose(trainer.old[n], v + 0.25) for n, v in start.items())
    trainer.cleanup()


def test_the_unet_lora_is_swapped_too_and_stage_a_has_none(stage_b_world, tmp_path):
    trainer = NFTTrainer(_nft(stage_b_world, tmp_path, lora_rank=2), **_parts())
    trainer.setup()
    lora_b = [n for n in trainer.guards.named if "lora_B" in n]
    assert lora_b and all(n in trainer.stage_a and n in trainer.old for n in lora_b)
    items, users = sorted(trainer.pool.titles)[:2], [None, None]
    args = (items, users, torch.randn(2, 4, 4, 4), torch.tensor([10, 500]))
    args = (*args, trainer.pool.text_states(items))
    with torch.no_grad():
        before, _ = trainer.predict(*args)
        for n in lora_b:
            trainer.guards.named[n].normal_()
        after, _ = trainer.predict(*args)
        as_old, _ = trainer.predict_with(trainer.old, *args)
        as_stage_a, _ = trainer.predict_with(trainer.stage_a, *args)
    assert not torch.allclose(after, before)
    assert torch.equal(as_old, before) and torch.equal(as_stage_a, before)
    trainer.cleanup()


def test_one_round_changes_every_trained_part(stage_b_world, tmp_path):
    trainer = NFTTrainer(_nft(stage_b_world, tmp_path, max_steps=2, nft_kl_weight=0.5), **_parts())
    trainer.setup()
    start = trainer.current_parameters()
    trainer.train()
    changed = {n for n, p in trainer.guards.named.items() if not torch.equal(p, start[n])}
    parts = {n.split(".")[1] for n in changed}
    assert {"adapter", "encoder"} <= parts
    rows = [json.loads(x) for x in (tmp_path / CURVES_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows if "round/r" in r] == [0]
    assert all(r["nft/kl"] >= 0 and "drift/tokens" in r for r in rows if "loss" in r)
    trainer.cleanup()


def _adapter(out):
    return {
        f"{f.relative_to(out)}/{k}": v
        for f in sorted((out / "adapter").rglob("*.safetensors"))
        for k, v in load_file(f).items()
    }


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_nft_rounds_resume_exactly(stage_b_world, tmp_path, decay):
    cfg = dict(nft_old_decay=decay, max_steps=6)
    full = run_reward(_nft(stage_b_world, tmp_path / "full", **cfg), **_parts())
    out = tmp_path / "split"
    run_reward(_nft(stage_b_world, out, **{**cfg, "max_steps": 4}), **_parts())
    resumed = run_reward(_nft(stage_b_world, out, **cfg), resume=True, **_parts())
    assert resumed.steps == full.steps == 6
    torch.testing.assert_close(torch.tensor(resumed.rewards), torch.tensor(full.rewards))
    weights, expected = _adapter(out), _adapter(tmp_path / "full")
    assert weights.keys() == expected.keys()
    for key, value in expected.items():  # bit for bit (CLIP embeds each title on its own)
        assert torch.equal(weights[key], value), key
    saved = {p.name for p in (out / "checkpoints").glob("*/*.safetensors")}
    assert ("nft_old.safetensors" in saved) == (decay > 0)
