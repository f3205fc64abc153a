"""The reward contract and the registry by name.

Every reward is a frozen ``nn.Module`` with one contract (learned from trl's removed diffusion
trainers, without their magic constants):

    rewards, info = reward(images, titles, users)

- ``images``: float ``(B, 3, H, W)`` in [0, 1]; gradients flow back into them.
- ``titles``: ``B`` item titles.
- ``users``: user embeddings ``(B, E)`` or ``None`` (cold start; a NaN row is one cold user).
- ``rewards``: ``(B,)``, higher is better; ``info``: named ``(B,)`` tensors for logging.

Reward-specific context (e.g. the preference model's ``user_ids``) is passed as keyword
arguments, which every reward accepts and ignores when it does not use them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from icg.rewards.clip import freeze

_REGISTRY: dict[str, Callable[..., Reward]] = {}


class Reward(nn.Module):
    """Base class: frozen, always in eval mode, differentiable in the image only."""

    name: str = "reward"

    def freeze(self) -> Reward:
        """No parameter requires grad; eval mode."""
        freeze(self)
        return self

    def train(self, mode: bool = True) -> Reward:
        """Reward models stay in eval mode (dropout off) whatever the trainer does."""
        return super().train(False)

    @staticmethod
    def check_inputs(
        images: torch.Tensor, titles: Sequence[str], users: torch.Tensor | None
    ) -> None:
        """Validate the contract's inputs; raise naming the field, the value and what was expected."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected (B, 3, H, W), got {tuple(images.shape)}")
        if len(titles) != images.shape[0]:
            raise ValueError(f"titles: expected {images.shape[0]} titles, got {len(titles)}")
        if users is not None and (users.ndim != 2 or users.shape[0] != images.shape[0]):
            raise ValueError(
                f"users: expected ({images.shape[0]}, E) or None, got {tuple(users.shape)}"
            )

    @classmethod
    def from_sources(cls, sources: Any) -> Reward:
        """Build from a `icg.rewards.factory.RewardSources` (where models come from). Rewards
        that need a CLIP, a predictor or a preference model override this; others take none."""
        return cls()

    def forward(
        self,
        images: torch.Tensor,
        titles: Sequence[str],
        users: torch.Tensor | None = None,
        **context: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def register_reward(name: str) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    """Register a reward class or factory under ``name`` (for `build_reward` and configs)."""

    def deco(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"reward {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_rewards() -> list[str]:
    """Registered reward names."""
    return sorted(_REGISTRY)


def build_reward(name: str, sources: Any = None, **kwargs: Any) -> Reward:
    """Build a registered reward by name (``aesthetic``, ``relevance``, ``preference``, ...).

    With ``sources`` (a `icg.rewards.factory.RewardSources`) the reward's ``from_sources`` picks
    its models; otherwise ``kwargs`` go to its constructor.
    """
    if name not in _REGISTRY:
        raise KeyError(f"reward {name!r}: unknown, expected one of {available_rewards()}")
    factory = _REGISTRY[name]
    if sources is not None and hasattr(factory, "from_sources"):
        reward = factory.from_sources(sources, **kwargs)
    else:
        reward = factory(**kwargs)
    reward.name = name
    return reward.freeze()
