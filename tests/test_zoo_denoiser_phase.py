"""The denoiser phase `sd` and `flow` share: `sd`'s UNet phase on it resumes bit-exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from icg.checkpoints import latest_checkpoint, load_trainer_state
from icg.zoo.recipes.sd import SDRecipeConfig, unet
from icg.zoo.recipes.sd.denoiser_phase import ema_update
from icg.zoo.recipes.sd.state import RecipeState

CFG = SDRecipeConfig(unet_channels=(16, 16, 16), unet_steps=5, unet_batch=2, checkpoint_every=2)


class _Stop(Exception):
    pass


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "latents": torch.randn(10, 8, 8, 8, generator=g),
        "text": torch.randn(10, 32, 64, generator=g).half(),
        "uncond": torch.zeros(32, 64),
    }


def _train(work: Path, data) -> torch.nn.Module:
    work.mkdir(exist_ok=True)
    return unet.train_unet(work, CFG, RecipeState(work / "state.json"), 0, data)


def test_sd_unet_phase_resumes_bit_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _data()
    straight = _train(tmp_path / "straight", data).state_dict()
    real = unet.unet_batch

    def crashing(step: int, *args):
        if step == 3:
            raise _Stop
        return real(step, *args)

    monkeypatch.setattr(unet, "unet_batch", crashing)
    with pytest.raises(_Stop):
        _train(tmp_path / "resumed", data)
    ckpt = latest_checkpoint(tmp_path / "resumed" / "unet_ckpt")
    assert ckpt is not None and load_trainer_state(ckpt)["step"] == 2
    monkeypatch.setattr(unet, "unet_batch", real)
    resumed = _train(tmp_path / "resumed", data).state_dict()
    assert resumed.keys() == straight.keys()
    for k, v in resumed.items():
        torch.testing.assert_close(v, straight[k], rtol=0, atol=0, msg=k)
    state = RecipeState(tmp_path / "resumed" / "state.json")
    assert state["unet_done"] and state["unet_params"] > 0
    assert (tmp_path / "resumed" / "unet" / "config.json").is_file()


def test_ema_update_warms_up_then_holds_its_decay() -> None:
    ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        ema.weight.fill_(0.0)
        model.weight.fill_(1.0)
    ema_update(ema, model, 0, 0.995)  # decay (1 + 0) / (10 + 0) = 0.1
    assert ema.weight.item() == pytest.approx(0.9)
    ema_update(ema, model, 10_000, 0.5)  # capped at max_decay
    assert ema.weight.item() == pytest.approx(0.95)
