"""The EMA of the trained weights: its math, its checkpoint round trip, and stage A's use of it
(the adapter holds the EMA, checkpoints hold both, resume is exact to the bit, null is today's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from align_fixtures import align_config, align_parts
from safetensors.torch import load_file

from icg.artifacts import ArtifactError
from icg.checkpoints import EMA_TENSORS, latest_checkpoint, load_trainer_state, save_checkpoint
from icg.data.testing import write_tiny_dataset
from icg.training.align import run_align
from icg.training.ema import (
    WeightEMA,
    ema_checkpoint_parts,
    ema_decay_at,
    named_parameters_of,
    restore_ema,
)


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under ``folder``, keyed ``file:key``."""
    out = {}
    for file in sorted(folder.rglob("*.safetensors")):
        for key, value in load_file(str(file)).items():
            out[f"{file.relative_to(folder)}:{key}"] = value
    return out


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_ema_decay_warms_up_to_its_cap():
    assert ema_decay_at(1, 0.999) == 0.0  # the first update copies the weights
    assert ema_decay_at(2, 0.999) == pytest.approx(2 / 11)
    assert ema_decay_at(101, 0.999) == pytest.approx(101 / 110)
    assert ema_decay_at(100_000, 0.999) == 0.999


def test_ema_math_on_a_toy_module():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    ema = WeightEMA(named_parameters_of(layer, list(layer.parameters())), decay=0.3)
    assert ema.names == ["weight", "bias"]
    expected = None
    for step in range(1, 6):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        d = ema_decay_at(step, 0.3)
        current = {n: p.detach().clone() for n, p in layer.named_parameters()}
        if expected is None:
            expected = current
        else:
            expected = {n: d * expected[n] + (1 - d) * current[n] for n in current}
        got = ema.averaged()
        for n in current:
            torch.testing.assert_close(got[n], expected[n], atol=1e-6, rtol=0)
    assert ema.steps == 5 and ema_decay_at(5, 0.3) == 0.3  # warm-up to step 3, then the cap
    raw = {n: p.detach().clone() for n, p in layer.named_parameters()}
    with ema.applied():
        for n, p in layer.named_parameters():
            torch.testing.assert_close(p.detach(), expected[n], atol=1e-6, rtol=0)
    for n, p in layer.named_parameters():
        assert torch.equal(p.detach(), raw[n])  # the raw weights come back
    ema.copy_to_model()
    assert torch.equal(layer.weight.detach(), ema.averaged()["weight"])


def test_ema_rejects_a_decay_outside_0_1():
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(named_parameters_of(layer, list(layer.parameters())), decay=1.0)
    with pytest.raises(ValueError, match="not parameters of the module"):
        named_parameters_of(layer, [torch.nn.Parameter(torch.zeros(1))])


def test_ema_checkpoint_round_trip_and_mismatches(tmp_path):
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    ema = WeightEMA(named_parameters_of(layer, list(layer.parameters()), "m."), decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            layer.weight.add_(1.0)
        ema.update()
    state, tensors = ema_checkpoint_parts(ema)
    ckpt = save_checkpoint(tmp_path, 3, state={"step": 3, **state}, tensors=tensors)
    assert (ckpt / f"{EMA_TENSORS}.safetensors").is_file()

    fresh_layer = torch.nn.Linear(3, 2)
    fresh = WeightEMA(named_parameters_of(fresh_layer, list(fresh_layer.parameters()), "m."), 0.9)
    restore_ema(fresh, ckpt, load_trainer_state(ckpt))
    assert fresh.steps == 3
    assert_bitwise_equal(fresh.averaged(), ema.averaged())

    other = torch.nn.Linear(4, 2)
    wrong = WeightEMA(named_parameters_of(other, list(other.parameters()), "m."), 0.9)
    with pytest.raises(ArtifactError, match="ema.safetensors"):
        restore_ema(wrong, ckpt, load_trainer_state(ckpt))
    renamed = WeightEMA(named_parameters_of(fresh_layer, list(fresh_layer.parameters())), 0.9)
    with pytest.raises(ArtifactError, match="ema.safetensors"):
        restore_ema(renamed, ckpt, load_trainer_state(ckpt))
    plain = save_checkpoint(tmp_path / "plain", 3, state={"step": 3})
    with pytest.raises(ArtifactError, match="ema_decay: null"):
        restore_ema(fresh, plain, load_trainer_state(plain))
    assert ema_checkpoint_parts(None) == ({}, {})
    restore_ema(None, plain, {})  # no EMA: nothing to restore


# ---- stage A --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_dataset(
        tmp_path_factory.mktemp("data"), n_items=3, n_users=3, n_impressions=12, dim=4
    )


def _adapter_weights(run: Path) -> dict[str, torch.Tensor]:
    return folder_tensors(run / "adapter")


def test_stage_a_saves_the_ema_and_resumes_it_bit_exactly(data_dir, tmp_path):
    full = run_align(align_config(data_dir, tmp_path / "full", ema_decay=0.9), **align_parts())
    out = tmp_path / "split"
    run_align(align_config(data_dir, out, max_steps=2, ema_decay=0.9), **align_parts())
    resumed = run_align(
        align_config(data_dir, out, max_steps=4, ema_decay=0.9), resume=True, **align_parts()
    )
    assert resumed.steps == full.steps == 4
    # the weights that draw and the raw weights of the last checkpoint: equal to the bit
    assert_bitwise_equal(_adapter_weights(out), _adapter_weights(tmp_path / "full"))
    last, last_full = (
        latest_checkpoint(out / "checkpoints"),
        latest_checkpoint(tmp_path / "full" / "checkpoints"),
    )
    assert_bitwise_equal(folder_tensors(last), folder_tensors(last_full))
    assert load_trainer_state(last)["ema"] == {"decay": 0.9, "steps": 4}

    # the adapter holds the EMA, not the raw weights the checkpoint resumes from
    ema = load_file(str(last / f"{EMA_TENSORS}.safetensors"))
    raw = folder_tensors(last / "model")
    adapter = _adapter_weights(out)
    assert adapter.keys() == raw.keys()
    differs = [k for k in raw if not torch.equal(raw[k], adapter[k])]
    assert differs  # training moved the weights, and the average lags them
    assert ema
    for name, value in ema.items():  # each averaged weight is in the adapter, bit for bit
        assert any(torch.equal(value, t) for t in adapter.values()), name


def test_stage_a_without_ema_saves_the_raw_weights_as_before(data_dir, tmp_path):
    result = run_align(align_config(data_dir, tmp_path, ema_decay=None), **align_parts())
    assert result.user_effect == pytest.approx(0.077781, rel=1e-3)  # the pin before EMAs
    last = latest_checkpoint(tmp_path / "checkpoints")
    assert not (last / f"{EMA_TENSORS}.safetensors").exists()
    assert "ema" not in load_trainer_state(last)
    assert_bitwise_equal(_adapter_weights(tmp_path), folder_tensors(last / "model"))
