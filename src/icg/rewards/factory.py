"""Building a `MultiReward` from names and weights, and reloading the one a stage-B run optimised.

Every reward is looked up in the registry (`register_reward`); its ``from_sources`` takes what it
needs from `RewardSources` (the CLIP, the aesthetic predictor, the preference model). A new reward
is one file with a ``@register_reward("name")`` class, imported by ``icg.rewards``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icg.config import DEFAULT_AESTHETIC, DEFAULT_CLIP, read_yaml_mapping
from icg.layout import PREFERENCE_RUN, RUN_CONFIG_FILE, STATS_FILE
from icg.rewards.base import build_reward
from icg.rewards.clip import ClipTowers
from icg.rewards.combined import MultiReward


@dataclass
class RewardSources:
    """Where the rewards' models come from.

    Args:
        clip: CLIP name or path of the aesthetic and relevance rewards.
        aesthetic_predictor: the aesthetic MLP's name or path.
        relevance_scale: ``"cosine"`` or ``"clipscore"``.
        preference: a trained preference model folder (``RUN/preference``).
        clips: loaded CLIPs by name, shared by every reward (and across calls).
    """

    clip: str = DEFAULT_CLIP
    aesthetic_predictor: str = DEFAULT_AESTHETIC
    relevance_scale: str = "cosine"
    preference: str | Path | None = None
    clips: dict[str, ClipTowers] = field(default_factory=dict)

    def towers(self, name: str | None = None) -> ClipTowers:
        """The CLIP ``name`` (default: ``clip``), loaded once."""
        name = name or self.clip
        if name not in self.clips:
            self.clips[name] = ClipTowers.from_pretrained(name)
        return self.clips[name]


def build_rewards(weights: dict[str, float], sources: RewardSources | None = None) -> MultiReward:
    """The `MultiReward` of ``weights`` (reward name → weight), each reward from the registry."""
    sources = sources or RewardSources()
    return MultiReward({name: build_reward(name, sources) for name in weights}, weights)


def load_run_reward(run: str | Path, clips: dict[str, ClipTowers] | None = None) -> MultiReward:
    """The reward a finished stage-B run optimised, with its saved normalisation statistics, in
    eval mode: ``RUN/config.yaml`` + ``RUN/reward_stats.safetensors`` (what `icg train reward`
    writes). It scores covers for best-of-K sampling. ``clips`` shares loaded CLIPs across runs.
    """
    run = Path(run)
    config_file, stats_file = run / RUN_CONFIG_FILE, run / STATS_FILE
    for file in (config_file, stats_file):
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing; expected a finished `icg train reward` run")
    cfg: dict[str, Any] = read_yaml_mapping(config_file)
    preference = cfg.get("preference")
    if preference is not None and not Path(preference).is_dir():
        preference = run.parent / PREFERENCE_RUN  # the run folder moved with its siblings
    sources = RewardSources(
        clip=cfg.get("clip", DEFAULT_CLIP),
        aesthetic_predictor=cfg.get("aesthetic_predictor", DEFAULT_AESTHETIC),
        relevance_scale=cfg.get("relevance_scale", "cosine"),
        preference=preference,
        clips={} if clips is None else clips,
    )
    reward = build_rewards(cfg["rewards"], sources)
    reward.load_stats(stats_file)
    return reward.eval()
