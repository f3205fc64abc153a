"""Stage B's guard rails: the tripwire's rule, the click-log halves its two preference models are
fitted on, and runs that stop at their best held-out step (and ones that do not), the EMA of
stage B, and exact resume of both."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stage_b_fixtures import stage_b_config, stage_b_parts, stage_b_rewards
from test_ema import assert_bitwise_equal, folder_tensors

from icg.checkpoints import EMA_TENSORS, latest_checkpoint, load_trainer_state
from icg.evaluation.report import curves_figure, tripwire_marks
from icg.training.click_log import ClickLog, PreferenceData
from icg.training.log_split import event_keys, keep_log_half, log_halves
from icg.training.preference import PreferenceConfig, fit_preference
from icg.training.reward import run_reward
from icg.training.tripwire import BEST_TENSORS, Tripwire, TripwireState, check_disjoint_halves


def assert_resumed_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Stage B's resume: every saved tensor agrees to float32 rounding. (Stage B's own resume
    drifts by an ulp after the resume point, EMA or not: its checkpoint at the resume step is
    identical to the bit, the next one differs by at most ~5e-7; stage A's is exact.)"""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5, msg=key)


# ---- the rule -------------------------------------------------------------------------------
def _observe(train, heldout, patience):
    state = TripwireState()
    for step, (t, h) in enumerate(zip(train, heldout, strict=True)):
        state.observe(step, t, h, patience)
    return state


def test_tripwire_fires_when_heldout_falls_while_training_rises():
    state = _observe([0, 1, 2, 3, 4, 5], [0, 2, 3, 2.5, 2, 1.5], patience=2)
    assert state.fired_step == 4 and state.best_step == 2 and state.best_heldout == 3


def test_tripwire_does_not_fire_when_both_rise_or_both_fall():
    assert _observe([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], patience=1).fired_step is None
    both_fall = _observe([5, 4, 3, 2, 1], [5, 4, 3, 2, 1], patience=1)
    assert both_fall.fired_step is None and both_fall.best_step == 0


def test_tripwire_streak_must_be_consecutive():
    # down-up, then a step where the held-out recovers, then down-up again: never 2 in a row
    state = _observe([0, 1, 2, 3, 4], [3, 2, 2.5, 2, 2.2], patience=2)
    assert state.fired_step is None and state.streak == 0


def test_tripwire_state_round_trips_as_json():
    state = _observe([0, 1, 2], [1, 0, -1], patience=1)
    again = TripwireState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state


# ---- the log halves ---------------------------------------------------------------------------
def _log(n: int, event_ids: bool = True) -> PreferenceData:
    g = torch.Generator().manual_seed(0)
    log = ClickLog(
        user=torch.randint(-1, 5, (n,), generator=g),
        item=torch.randint(0, 7, (n,), generator=g),
        cover=torch.randint(0, 7, (n,), generator=g),
        position=torch.randint(0, 4, (n,), generator=g),
        clicked=(torch.rand(n, generator=g) < 0.3).float(),
        timestamp=torch.arange(n),
        event_id=np.array([f"e{i}" for i in range(n)]) if event_ids else None,
    )
    return PreferenceData(
        log,
        torch.randn(7, 4, generator=g),
        [f"u{i}" for i in range(5)],
        [f"i{i}" for i in range(7)],
    )


@pytest.mark.parametrize("event_ids", [True, False])
def test_log_halves_are_disjoint_cover_the_log_and_are_stable(event_ids):
    data = _log(2000, event_ids)
    halves = [keep_log_half(data, h) for h in (0, 1)]
    keys = [set(event_keys(h)) for h in halves]
    assert not keys[0] & keys[1]
    assert keys[0] | keys[1] == set(event_keys(data))
    assert len(halves[0].log) + len(halves[1].log) == len(data.log)
    assert 0.45 < len(halves[0].log) / len(data.log) < 0.55
    assert keep_log_half(data, None) is data
    # an event's half depends on its key alone: not on the others, the order or the process
    assert log_halves(["e7", "e3"]).tolist() == log_halves(["e3", "e7"])[::-1].tolist()
    assert log_halves(["e0", "e1", "e2", "e3"]).tolist() == [1, 0, 1, 1]
    with pytest.raises(ValueError, match="log_half"):
        keep_log_half(data, 2)


def test_fit_preference_on_one_half_uses_only_its_events():
    data = _log(600)
    cfg = PreferenceConfig(epochs=1, rank=2, hidden_dim=4, log_half=1, batch_size=256)
    result = fit_preference(data, cfg)
    half = int((log_halves(event_keys(data)) == 1).sum())
    assert result.metrics["train_events"] + result.metrics["val_events"] == half
    assert set(result.val.event_id) <= {k for k, h in zip(event_keys(data), log_halves(
        event_keys(data)), strict=True) if h == 1}  # fmt: skip


def _preference_folder(path, half):
    path.mkdir(parents=True, exist_ok=True)
    (path / "train_config.yaml").write_text(f"log_half: {half}\n")
    return path


def test_disjoint_halves_are_checked(tmp_path):
    a, b = _preference_folder(tmp_path / "a", 0), _preference_folder(tmp_path / "b", 1)
    check_disjoint_halves(a, b)
    with pytest.raises(ValueError, match="same log half"):
        check_disjoint_halves(a, a)
    whole = _preference_folder(tmp_path / "whole", "null")
    with pytest.raises(ValueError, match="log_half=None"):
        check_disjoint_halves(whole, b)
    with pytest.raises(ValueError, match="missing"):
        check_disjoint_halves(tmp_path / "nothing", b)


# ---- stage B runs ------------------------------------------------------------------------------
def _tripwire_config(world, out, **kw):
    halves = out.parent / "halves"
    values = dict(
        preference=_preference_folder(halves / "a", 0),
        tripwire_preference=_preference_folder(halves / "b", 1),
        tripwire_every=1, tripwire_patience=2, tripwire_pairs=3, max_steps=8,
        checkpoint_every=3, num_inference_steps=2, ema_decay=0.99,
    )  # fmt: skip
    values.update(kw)
    return stage_b_config(world, out, **values)


def _parts():
    return {**stage_b_parts(), "heldout_reward": stage_b_rewards().rewards["preference"]}


def _scripted(monkeypatch, train, heldout):
    """Tripwire scores as a function of the step (so a resumed run sees the same ones)."""

    def scores(self):
        step = self.trainer.step
        return float(train[step]), float(heldout[step])

    monkeypatch.setattr(Tripwire, "scores", scores)


def _curves(out):
    return [json.loads(x) for x in (out / "curves.jsonl").read_text().splitlines()]


def test_tripwire_stops_a_diverging_run_and_keeps_its_best_step(
    stage_b_world, tmp_path, monkeypatch
):
    train = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    heldout = [0, 1, 2, 3, 2, 1, 0, -1, -2]  # best at step 3; down-while-up from step 4
    _scripted(monkeypatch, train, heldout)
    out = tmp_path / "run"
    result = run_reward(_tripwire_config(stage_b_world, out), **_parts())
    assert result.tripwire_step == 5 and result.steps == 5  # stopped before max_steps=8
    last = latest_checkpoint(out / "checkpoints")
    assert last.name == "checkpoint-00000005"
    state = load_trainer_state(last)["tripwire"]
    assert state["best_step"] == 3 and state["fired_step"] == 5
    # the adapter is the best step's weights that draw (its EMA), not the last ones
    best = load_file(str(last / f"{BEST_TENSORS}.safetensors"))
    ema = load_file(str(last / f"{EMA_TENSORS}.safetensors"))
    adapter = folder_tensors(out / "adapter")
    changed = [n for n in ema if not torch.equal(ema[n], best[n])]
    assert changed  # the run moved on after step 3
    for name in changed:
        assert any(torch.equal(best[name], t) for t in adapter.values()), name
        assert not any(torch.equal(ema[name], t) for t in adapter.values()), name
    rows = [r for r in _curves(out) if "reward/tripwire_heldout" in r]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["reward/tripwire_heldout"] for r in rows] == heldout[:6]
    fired = [r for r in _curves(out) if "reward/tripwire_fired" in r]
    assert fired == [{"step": 5, "reward/tripwire_fired": 3}]

    # report.html: both curves in one panel and a marker where it fired
    curves = {"icg": _curves(out)}
    assert tripwire_marks(curves) == {"icg": (5, 3)}
    assert curves_figure(curves).startswith("data:image/png;base64,")

    # resumed from step 3 (before it fired), it fires at the same step and keeps the same bits
    split = tmp_path / "split"
    run_reward(_tripwire_config(stage_b_world, split, max_steps=3), **_parts())
    again = run_reward(_tripwire_config(stage_b_world, split), resume=True, **_parts())
    assert again.tripwire_step == 5
    assert_bitwise_equal(folder_tensors(split / "adapter"), adapter)
    assert_resumed_equal(
        folder_tensors(latest_checkpoint(split / "checkpoints")), folder_tensors(last)
    )
    # and resuming a run that already fired trains no further
    done = run_reward(_tripwire_config(stage_b_world, split), resume=True, **_parts())
    assert done.steps == 5 and done.tripwire_step == 5
    assert_bitwise_equal(folder_tensors(split / "adapter"), adapter)


def test_tripwire_does_not_fire_when_both_rewards_rise(stage_b_world, tmp_path, monkeypatch):
    _scripted(monkeypatch, list(range(9)), [0.5 * s for s in range(9)])
    out = tmp_path / "run"
    result = run_reward(_tripwire_config(stage_b_world, out, max_steps=4), **_parts())
    assert result.tripwire_step is None and result.steps == 4
    last = latest_checkpoint(out / "checkpoints")
    assert load_trainer_state(last)["tripwire"]["best_step"] == 4
    ema = load_file(str(last / f"{EMA_TENSORS}.safetensors"))
    adapter = folder_tensors(out / "adapter")
    for name, value in ema.items():  # the adapter is the final EMA
        assert any(torch.equal(value, t) for t in adapter.values()), name


def test_tripwire_scores_real_draws(stage_b_world, tmp_path):
    out = tmp_path / "run"
    cfg = _tripwire_config(stage_b_world, out, max_steps=2, tripwire_patience=5)
    run_reward(cfg, **_parts())
    rows = [r for r in _curves(out) if "reward/tripwire_train" in r]
    assert [r["step"] for r in rows] == [0, 1, 2]
    values = [r[k] for r in rows for k in ("reward/tripwire_train", "reward/tripwire_heldout")]
    assert all(v == v and abs(v) < 1e6 for v in values)  # finite scores of real covers


def test_stage_b_ema_resumes_and_null_saves_raw_weights(stage_b_world, tmp_path):
    full = tmp_path / "full"
    run_reward(stage_b_config(stage_b_world, full, ema_decay=0.9), **stage_b_parts())
    split = tmp_path / "split"
    run_reward(stage_b_config(stage_b_world, split, max_steps=2, ema_decay=0.9), **stage_b_parts())
    run_reward(stage_b_config(stage_b_world, split, ema_decay=0.9), resume=True, **stage_b_parts())
    assert_bitwise_equal(
        folder_tensors(split / "checkpoints" / "checkpoint-00000002"),
        folder_tensors(full / "checkpoints" / "checkpoint-00000002"),
    )  # the resume point, EMA included
    assert_resumed_equal(folder_tensors(split / "adapter"), folder_tensors(full / "adapter"))
    last = latest_checkpoint(full / "checkpoints")
    assert_resumed_equal(
        folder_tensors(latest_checkpoint(split / "checkpoints")), folder_tensors(last)
    )
    assert load_trainer_state(last)["ema"] == {"decay": 0.9, "steps": 4}

    raw = tmp_path / "raw"
    run_reward(stage_b_config(stage_b_world, raw, ema_decay=None), **stage_b_parts())
    last = latest_checkpoint(raw / "checkpoints")
    assert not (last / f"{EMA_TENSORS}.safetensors").exists()
    model = {
        k.removeprefix("model/"): v
        for k, v in folder_tensors(last).items()
        if k.startswith("model/") and "reward_stats" not in k
    }
    adapter = folder_tensors(raw / "adapter")
    assert_bitwise_equal(adapter, model)


def test_cli_exposes_the_ema_and_the_tripwire(stage_b_world, tmp_path):
    from typer.testing import CliRunner

    from icg.cli import build_app

    data, init = stage_b_world
    a, b = _preference_folder(tmp_path / "a", 0), _preference_folder(tmp_path / "b", 1)
    base = ["train", "reward", "--data", str(data), "--init", str(init), "--out", str(tmp_path)]
    base += ["--preference", str(a), "--dry-run"]
    options = ["--tripwire-preference", str(b), "--tripwire-every", "5", "--no-ema"]
    result = CliRunner().invoke(build_app(), [*base, *options])
    assert result.exit_code == 0, result.output
    cfg = json.loads(result.output)
    assert cfg["ema_decay"] is None and cfg["tripwire_every"] == 5
    assert cfg["tripwire_preference"] == str(b) and cfg["tripwire_patience"] == 3
    result = CliRunner().invoke(build_app(), [*base, "--ema-decay", "0.9"])
    assert result.exit_code == 0 and json.loads(result.output)["ema_decay"] == 0.9
    same = ["--tripwire-preference", str(a)]
    result = CliRunner().invoke(build_app(), [*base, *same])
    assert result.exit_code != 0 and "same log half" in result.output
    args = ["train", "preference", "--data", str(data), "--out", str(tmp_path / "p")]
    result = CliRunner().invoke(build_app(), [*args, "--log-half", "1", "--dry-run"])
    assert result.exit_code == 0 and json.loads(result.output)["log_half"] == 1
