"""icg: personalized cover image generation (ICG, EMNLP 2025).

MLLM meta-token prompting, user-embedding refinement, a plug-and-play adapter for diffusers
UNets, and label-free multi-reward alignment, with CoverWorld, a simulated cover platform whose
ground truth is known, as the default data.

The main classes and functions are importable from the top, as in diffusers::

    from icg import ICGPipeline
    pipe = ICGPipeline.from_pretrained("RUN/icg/adapter")           # base and MLLM by record
    cover = pipe("Midnight Harbor", reference_image, user_embeddings=u).images[0]

Imports are lazy: ``import icg`` loads no torch until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # models and inference
    "ICGPipeline": "icg.pipeline",
    "ICGModel": "icg.models.icg_model",
    "MetaTokenEncoder": "icg.models.meta_tokens",
    "UserRefiner": "icg.models.user_refiner",
    "CoverAdapter": "icg.models.adapter",
    "PreferenceModel": "icg.models.preference",
    "generate_covers": "icg.generation",
    # rewards
    "MultiReward": "icg.rewards.combined",
    "RewardSources": "icg.rewards.factory",
    "build_rewards": "icg.rewards.factory",
    "load_run_reward": "icg.rewards.factory",
    "register_reward": "icg.rewards.base",
    # training
    "AlignConfig": "icg.training.align",
    "run_align": "icg.training.align",
    "RewardConfig": "icg.training.reward",
    "run_reward": "icg.training.reward",
    "PreferenceConfig": "icg.training.preference",
    "train_preference": "icg.training.preference",
    "load_config": "icg.config",
    # data, world, evaluation
    "load_dataset": "icg.data",
    "WorldConfig": "icg.world.config",
    "generate_world": "icg.world.generate",
    "EvalConfig": "icg.evaluation.run",
    "evaluate_run": "icg.evaluation.run",
    "run_demo": "icg.demo",
}

__all__ = [
    "AlignConfig",
    "CoverAdapter",
    "EvalConfig",
    "ICGModel",
    "ICGPipeline",
    "MetaTokenEncoder",
    "MultiReward",
    "PreferenceConfig",
    "PreferenceModel",
    "RewardConfig",
    "RewardSources",
    "UserRefiner",
    "WorldConfig",
    "build_rewards",
    "evaluate_run",
    "generate_covers",
    "generate_world",
    "load_config",
    "load_dataset",
    "load_run_reward",
    "register_reward",
    "run_align",
    "run_demo",
    "run_reward",
    "train_preference",
]

if TYPE_CHECKING:
    from icg.config import load_config
    from icg.data import load_dataset
    from icg.demo import run_demo
    from icg.evaluation.run import EvalConfig, evaluate_run
    from icg.generation import generate_covers
    from icg.models.adapter import CoverAdapter
    from icg.models.icg_model import ICGModel
    from icg.models.meta_tokens import MetaTokenEncoder
    from icg.models.preference import PreferenceModel
    from icg.models.user_refiner import UserRefiner
    from icg.pipeline import ICGPipeline
    from icg.rewards.base import register_reward
    from icg.rewards.combined import MultiReward
    from icg.rewards.factory import RewardSources, build_rewards, load_run_reward
    from icg.training.align import AlignConfig, run_align
    from icg.training.preference import PreferenceConfig, train_preference
    from icg.training.reward import RewardConfig, run_reward
    from icg.world.config import WorldConfig
    from icg.world.generate import generate_world


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'icg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
