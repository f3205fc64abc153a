"""ICGModel save/load: exact key sets, names recorded in the configs, a round trip."""

from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import dummy_image, perturb_, tiny_icg, tiny_qwen2vl
from safetensors.torch import load_file

from icg.models.icg_model import ICGModel

LAYER = "down_blocks_1_attentions_0_transformer_blocks_0_attn2"
MID_LAYER = "mid_block_attentions_0_transformer_blocks_0_attn2"
UP_LAYER = "up_blocks_0_attentions_{}_transformer_blocks_0_attn2"


def test_saved_keys_and_round_trip(tmp_path):
    _, model = tiny_icg(user_dim=6)
    perturb_(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "icg_config.json").read_text())
    assert config == {
        "format": "icg-adapter",
        "version": 1,
        "base_model": "tiny-sd",
        "mllm": "tiny-qwen2vl",
        "parts": ["meta_tokens", "adapter", "refiner"],
    }
    weights = "diffusion_pytorch_model.safetensors"
    assert set(load_file(tmp_path / "meta_tokens" / weights)) == {"meta_tokens"}
    assert set(load_file(tmp_path / "refiner" / weights)) == {
        "user_proj.weight",
        "user_proj.bias",
        "film.1.weight",
        "film.1.bias",
    }
    layers = [LAYER, MID_LAYER] + [UP_LAYER.format(i) for i in range(2)]
    assert set(load_file(tmp_path / "adapter" / weights)) == {
        "proj.0.weight",
        "proj.0.bias",
        "proj.1.weight",
        "proj.1.bias",
        "proj.3.weight",
        "proj.3.bias",
        "norm.weight",
        "norm.bias",
        "token_mix.weight",
        "token_mix.bias",
        *(f"attn_layers.{n}.to_{kv}_icg.weight" for n in layers for kv in "kv"),
    }
    adapter_config = json.loads((tmp_path / "adapter" / "config.json").read_text())
    assert adapter_config["base_model"] == "tiny-sd"
    assert set(adapter_config["layers"]) == {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
        "mid_block.attentions.0.transformer_blocks.0.attn2.processor",
        *(f"up_blocks.0.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(2)),
    }

    mllm, processor = tiny_qwen2vl()
    loaded = ICGModel.from_pretrained(tmp_path, mllm=mllm, processor=processor)
    saved, restored = model.state_dict(), loaded.state_dict()
    assert set(saved) == set(restored)
    for name, value in saved.items():
        assert torch.equal(value, restored[name]), name
    with torch.no_grad():
        feats = loaded.encoder(["red cat"], [dummy_image()])
        expected = model.encoder(["red cat"], [dummy_image()])
        torch.testing.assert_close(feats, expected)
        users = torch.randn(1, 6)
        torch.testing.assert_close(loaded(feats, users), model(expected, users))


def test_not_an_adapter_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an ICG adapter directory"):
        ICGModel.from_pretrained(tmp_path)
