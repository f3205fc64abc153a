"""AestheticMLP keeps LAION's layout; coverworld-tiny `aesthetic` passes its Spearman gate."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from icg.zoo import REGISTRY, resolve
from icg.zoo.aesthetic import AestheticMLP
from icg.zoo.evaldata import fresh_covers
from icg.zoo.recipes import _base

LAION_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


def test_default_is_the_laion_layout() -> None:
    model = AestheticMLP()
    assert set(model.state_dict()) == LAION_KEYS
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["layers.0.weight"] == (1024, 768)
    assert shapes["layers.7.weight"] == (1, 16)
    assert [type(m).__name__ for m in model.layers] == ["Linear", "Dropout"] * 3 + ["Linear"] * 2


def test_from_laion_state_dict_and_save_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    reference = torch.nn.Sequential(  # the published predictor's module, verbatim layout
        torch.nn.Linear(768, 1024),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 1),
    ).eval()
    state = {f"layers.{k}": v for k, v in reference.state_dict().items()}
    model = AestheticMLP.from_laion(state).eval()
    x = torch.nn.functional.normalize(torch.randn(5, 768), dim=-1)
    torch.testing.assert_close(model(x), reference(x))
    model.save_pretrained(str(tmp_path))
    again = AestheticMLP.from_pretrained(str(tmp_path)).eval()
    torch.testing.assert_close(again(x), reference(x))
    with pytest.raises(ValueError, match="expected \\(N, 768\\)"):
        model(torch.zeros(2, 64))


def test_activation_is_validated() -> None:
    with pytest.raises(ValueError, match="activation"):
        AestheticMLP(activation="tanh")


def test_shipped_model_gate() -> None:
    from icg.zoo.recipes import aesthetic as recipe

    path = resolve("zoo:aesthetic")
    weights = load_file(str(REGISTRY["aesthetic"].path / "diffusion_pytorch_model.safetensors"))
    assert set(weights) == LAION_KEYS
    n = 400
    metrics = recipe.measure(path, resolve("zoo:clip"), fresh_covers(n, k=1))
    # Fisher-z standard error of a correlation near the gate: (1 - r^2) / sqrt(n - 3)
    tolerance = 3 * (1 - 0.8**2) / math.sqrt(n - 3)
    assert metrics["spearman"] >= recipe.THRESHOLDS["spearman"] - tolerance, metrics
    assert _base.read_gates(path)["passed"] is True
