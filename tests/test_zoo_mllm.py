"""coverworld-tiny `mllm`: AutoModelForImageTextToText / AutoProcessor load it; the gate holds."""

from __future__ import annotations

import math

import pytest

from icg.zoo import REGISTRY, resolve
from icg.zoo.evaldata import fresh_covers
from icg.zoo.recipes import _base
from icg.zoo.recipes import mllm as recipe
from icg.zoo.recipes.mllm.chat import parse_answer


@pytest.fixture(scope="module")
def path() -> str:
    return resolve("zoo:mllm")


def test_loads_and_generates_with_stock_classes(path: str) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    covers = fresh_covers(2, k=4)
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": f"title: {covers.titles[0]}\ndescribe the cover."},
            ],
        }
    ]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = processor(images=[covers.images[0]], text=[prompt], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    answer = processor.batch_decode(
        out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )[0]
    assert answer.startswith("motif: ") and "palette: " in answer and "style: " in answer
    motif, palette = parse_answer(answer)
    assert motif >= 0 and palette >= 0
    hidden = model(**inputs, output_hidden_states=True).hidden_states[-1]  # what meta tokens read
    assert hidden.shape[-1] == model.config.text_config.hidden_size


@pytest.mark.slow  # the shipped MLLM answers on every fresh cover (over a minute on 2 cores)
def test_gate_on_fresh_items(path: str) -> None:
    n = 200
    metrics = recipe.measure(path, fresh_covers(n, k=1))
    for key, threshold in recipe.THRESHOLDS.items():
        # three binomial standard errors below the gate at n=200
        assert metrics[key] >= threshold - 3 * math.sqrt(threshold * (1 - threshold) / n), (
            key,
            metrics,
        )
    assert metrics["parse_rate"] >= 0.95


def test_card_and_size(path: str) -> None:
    gates = _base.read_gates(path)
    assert gates["passed"] is True
    assert gates["targets_met"] == {"image_only_motif": True}  # issue 13: the cover alone, 0.9
    assert _base.folder_size(path) < 10e6
    assert "Wall time" in (REGISTRY["mllm"].path / "README.md").read_text()
