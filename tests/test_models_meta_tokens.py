"""MetaTokenEncoder on tiny random Qwen2-VL and LLaVA models."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import dummy_image, tiny_llava, tiny_qwen2vl

from icg.models.meta_tokens import MetaTokenEncoder, relayout_with_meta

K = 3
TITLES = ["red cat", "the old blue sea story guide", "a tree"]


def _encoder(kind: str, padding_side: str = "left", **kwargs) -> MetaTokenEncoder:
    mllm, processor = tiny_qwen2vl() if kind == "qwen2vl" else tiny_llava()
    torch.manual_seed(1)
    encoder = MetaTokenEncoder(
        hidden_size=32,
        num_meta_tokens=K,
        mllm_name_or_path="tiny",
        padding_side=padding_side,
        **kwargs,
    )
    return encoder.attach(mllm, processor)


def test_relayout_left_and_right():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    left = relayout_with_meta(ids, mask, 2, 0, "left")
    assert left[0].tolist() == [[0, 0, 5, 6, 0, 0], [7, 8, 9, 4, 0, 0]]
    assert left[2].tolist()[0] == [False, False, False, False, True, True]
    right = relayout_with_meta(ids, mask, 2, 0, "right")
    assert right[1].tolist()[0] == [1, 1, 1, 1, 0, 0]
    assert right[2].tolist()[0] == [False, False, True, True, False, False]


@pytest.mark.parametrize("kind", ["qwen2vl", "llava"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_item_alone_equals_item_in_padded_mixed_batch(kind, padding_side):
    encoder = _encoder(kind, padding_side)
    images = [dummy_image(0), None, dummy_image(2, size=(56, 28))]
    with torch.no_grad():
        batch = encoder(TITLES, images)
        assert batch.shape == (3, K, 32)
        for i in range(3):
            alone = encoder([TITLES[i]], [images[i]])
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[0], batch[2])


def test_meta_tokens_get_gradients_and_mllm_stays_frozen():
    encoder = _encoder("qwen2vl")
    encoder([TITLES[0]], [dummy_image()]).pow(2).mean().backward()
    assert encoder.meta_tokens.grad is not None and encoder.meta_tokens.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in encoder.mllm.parameters())
    assert set(encoder.state_dict()) == {"meta_tokens"}


def test_lora_is_trainable_and_saved(tmp_path):
    encoder = _encoder("qwen2vl", lora_rank=2)
    lora = encoder.lora_parameters()
    assert lora and all(p.requires_grad for p in lora)
    with torch.no_grad():
        for p in lora:
            p.normal_()
    expected = encoder(TITLES[:2], [dummy_image(), None]).detach()
    encoder.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "mllm_lora.safetensors",
    ]
    mllm, processor = tiny_qwen2vl()
    loaded = MetaTokenEncoder.load(tmp_path, mllm=mllm, processor=processor)
    with torch.no_grad():
        torch.testing.assert_close(loaded(TITLES[:2], [dummy_image(), None]), expected)


def test_errors_are_explained():
    encoder = MetaTokenEncoder(hidden_size=32, num_meta_tokens=K)
    with pytest.raises(RuntimeError, match="no MLLM"):
        encoder(["x"])
    with pytest.raises(ValueError, match="hidden size 32 does not match"):
        MetaTokenEncoder(hidden_size=16).attach(*tiny_qwen2vl())
    with pytest.raises(ValueError, match="expected 1 entries"):
        _encoder("qwen2vl")(["a"], [None, None])


@pytest.mark.parametrize("kind", ["qwen2vl", "llava"])
def test_read_image_false_is_the_title_only_encoder(kind, tmp_path):
    reads = _encoder(kind)
    blind = _encoder(kind, read_image=False)
    images = [dummy_image(0), dummy_image(1), None]
    with torch.no_grad():
        torch.testing.assert_close(blind(TITLES, images), reads(TITLES, [None] * 3))
        assert not torch.allclose(reads(TITLES, images)[0], reads(TITLES, [None] * 3)[0])
    blind.save_pretrained(tmp_path)
    assert MetaTokenEncoder.from_pretrained(tmp_path).config.read_image is False
