"""Shared by the stage-A tests: tiny base parts and a tiny config."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline
from model_fixtures import get_dummy_components, tiny_qwen2vl

from icg.training.align import AlignConfig


def align_parts() -> dict:
    base = StableDiffusionPipeline(**get_dummy_components())
    mllm, processor = tiny_qwen2vl()
    return {"base": base, "mllm": mllm, "processor": processor}


def align_config(data_dir, out, **kw) -> AlignConfig:
    values = dict(
        data=data_dir, out=out, base="tiny-sd", mllm="tiny-qwen2vl", max_steps=4, batch_size=3,
        num_meta_tokens=2, num_tokens=2, refiner_hidden_dim=8, checkpoint_every=2,
        learning_rate=1e-2, log_every=1, resolution=32, targets="clicks",
    )  # fmt: skip
    values.update(kw)
    return AlignConfig(**values)
