"""Rewards for ICG stage B: one contract, a registry by name, and a normalising combination.

```python
from icg.rewards import RewardSources, build_rewards
rewards = build_rewards({"aesthetic": 1, "relevance": 2, "preference": 2},
                        RewardSources(preference="RUN/preference"))
total, info = rewards(images, titles, users)   # images (B, 3, H, W) in [0, 1], differentiable
```
"""

from icg.rewards.aesthetic import AestheticReward, load_aesthetic_predictor
from icg.rewards.base import Reward, available_rewards, build_reward, register_reward
from icg.rewards.clip import ClipPreprocess, ClipTowers, clip_preprocess, embed_files
from icg.rewards.combined import (
    MultiReward,
    RunningMoments,
    merge_moments,
    parse_weights,
    standardise,
)
from icg.rewards.factory import STATS_FILE, RewardSources, build_rewards, load_run_reward
from icg.rewards.preference import PreferenceReward
from icg.rewards.relevance import RelevanceReward, clip_score

__all__ = [
    "AestheticReward",
    "ClipPreprocess",
    "ClipTowers",
    "MultiReward",
    "PreferenceReward",
    "RelevanceReward",
    "RewardSources",
    "STATS_FILE",
    "Reward",
    "RunningMoments",
    "available_rewards",
    "build_reward",
    "build_rewards",
    "clip_preprocess",
    "clip_score",
    "embed_files",
    "load_aesthetic_predictor",
    "load_run_reward",
    "merge_moments",
    "parse_weights",
    "register_reward",
    "standardise",
]
