"""Shared by the stage-B tests: a tiny data folder + stage-A adapter, tiny rewards, parts, config."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from model_fixtures import get_dummy_components, perturb_, tiny_icg, tiny_qwen2vl

from icg.data.testing import write_tiny_dataset
from icg.models.preference import PreferenceModel
from icg.rewards import AestheticReward, MultiReward, PreferenceReward, RelevanceReward
from icg.rewards.testing import tiny_clip
from icg.training.reward import RewardConfig

USER_DIM = 4


@pytest.fixture(scope="module")
def stage_b_world(tmp_path_factory):
    """A tiny data folder and a 'stage A' adapter (perturbed so every branch carries gradient)."""
    root = tmp_path_factory.mktemp("stageb")
    data = write_tiny_dataset(root / "data", n_items=3, n_users=3, n_impressions=12, dim=USER_DIM)
    _, model = tiny_icg(user_dim=USER_DIM, num_meta_tokens=2)
    perturb_(model)
    model.save_pretrained(root / "align" / "adapter")
    return data, root / "align"


def stage_b_rewards() -> MultiReward:
    from icg.zoo.aesthetic import AestheticMLP

    clip = tiny_clip(image_size=32, projection_dim=16)
    torch.manual_seed(0)
    aesthetic = AestheticMLP(input_size=16, hidden_sizes=(8,), dropouts=(), activation="gelu")
    pm = PreferenceModel(image_dim=16, user_dim=USER_DIM, rank=4, hidden_dim=8)
    with torch.no_grad():
        pm.user_proj.weight.normal_()
    return MultiReward(
        {
            "aesthetic": AestheticReward(clip, aesthetic),
            "relevance": RelevanceReward(clip),
            "preference": PreferenceReward(pm, clip),
        }
    )


def stage_b_parts() -> dict:
    base = StableDiffusionPipeline(**get_dummy_components())
    base.set_progress_bar_config(disable=True)
    mllm, processor = tiny_qwen2vl()
    return {"base": base, "mllm": mllm, "processor": processor, "rewards": stage_b_rewards()}


def stage_b_config(world, out, **kw) -> RewardConfig:
    data, init = world
    values = dict(
        data=data,
        init=init,
        out=out,
        preference=out / "unused-preference",
        max_steps=4,
        batch_size=2,
        num_inference_steps=3,
        truncation_k=1,
        learning_rate=1e-2,
        checkpoint_every=2,
        resolution=32,
        cold_start_fraction=0.5,
    )
    values.update(kw)
    return RewardConfig(**values)
