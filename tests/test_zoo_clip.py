"""coverworld-tiny `clip`: stock transformers classes load it; the zero-shot gate holds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icg.zoo import REGISTRY, resolve
from icg.zoo.evaldata import fresh_covers
from icg.zoo.recipes import _base
from icg.zoo.recipes import clip as recipe


def margin(p: float, n: int) -> float:
    """Three binomial standard errors at accuracy p over n samples."""
    return 3 * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def path() -> str:
    return resolve("zoo:clip")


def test_loads_with_stock_classes(path: str) -> None:
    from transformers import AutoTokenizer, CLIPModel, CLIPProcessor, CLIPTokenizer

    model = CLIPModel.from_pretrained(path).eval()
    assert model.config.text_config.hidden_size == 64  # the sd UNet's cross_attention_dim
    assert model.config.text_config.max_position_embeddings == 32
    assert model.config.vision_config.image_size == 64
    tok = CLIPTokenizer.from_pretrained(path)
    auto = AutoTokenizer.from_pretrained(path)
    texts = ["The Azure Star", "a cover with a crescent", "My lost gem, CYAN podcast!"]
    ids = tok(texts, padding="max_length", max_length=32, return_tensors="pt")
    assert (
        ids["input_ids"].tolist() == auto(texts, padding="max_length", max_length=32)["input_ids"]
    )
    assert ids["input_ids"][0, 0] == tok.bos_token_id == model.config.text_config.bos_token_id
    with torch.no_grad():
        hidden = model.text_model(**ids).last_hidden_state  # what the sd UNet cross-attends to
        feats = model.get_text_features(**ids)
    assert hidden.shape == (3, 32, 64)
    feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
    assert feats.shape == (3, model.config.projection_dim)

    images = fresh_covers(4, k=3).images
    pixels = CLIPProcessor.from_pretrained(path)(images=list(images), return_tensors="pt")
    # the stock processor gives the recipe's own normalisation
    torch.testing.assert_close(
        pixels["pixel_values"], _base.images_to_tensor(images), atol=1e-5, rtol=0
    )


def test_zero_shot_gate_on_fresh_renders(path: str) -> None:
    n = 400
    metrics = recipe.measure(path, fresh_covers(n, k=1))
    for key, threshold in recipe.THRESHOLDS.items():
        assert metrics[key] >= threshold - margin(threshold, n), (key, metrics)


def test_card_and_gates_file(path: str) -> None:
    gates = _base.read_gates(path)
    assert gates["passed"] is True
    assert gates["parameters"] == sum(
        p.numel() for p in __import__("transformers").CLIPModel.from_pretrained(path).parameters()
    )
    card = (REGISTRY["clip"].path / "README.md").read_text()
    assert "Wall time" in card and "zero_shot_motif_acc" in card
    assert _base.folder_size(path) < 5e6
    assert np.isfinite(gates["wall_time_s"])
