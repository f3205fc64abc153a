"""Relevance reward: CLIPScore between a cover and its item title.

Hessel et al. 2021 (CLIPScore, Sec. 3): ``w * max(cos(E_image, E_text), 0)``. Two scales:

- ``"cosine"`` (default): the raw cosine in [-1, 1]. Smooth everywhere, so a cover that starts
  out anti-aligned with its title still gets a gradient; the best choice as a training reward.
- ``"clipscore"``: ``100 * max(cos, 0)``, the torchmetrics convention, for reporting
  (the paper's ``w = 2.5`` is the same up to scale).

Text embeddings are computed once per distinct title (no gradient; the text side is constant).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from icg.config import DEFAULT_CLIP
from icg.rewards.base import Reward, register_reward
from icg.rewards.clip import ClipTowers

SCALES = ("cosine", "clipscore")


def clip_score(cosine: torch.Tensor, scale: str = "cosine") -> torch.Tensor:
    """CLIPScore (Hessel et al. 2021, Eq. 1) from cosines: ``cos`` or ``100 * max(cos, 0)``."""
    if scale == "cosine":
        return cosine
    if scale == "clipscore":
        return 100.0 * cosine.clamp(min=0.0)
    raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")


@register_reward("relevance")
class RelevanceReward(Reward):
    """CLIPScore of each image against its title, with any transformers ``CLIPModel``.

    Args:
        clip: `ClipTowers` or a name/path (default ``zoo:clip``).
        scale: ``"cosine"`` or ``"clipscore"`` (see the module docstring).
        template: how a title becomes the text prompt (``"{title}"`` by default).
    """

    def __init__(
        self,
        clip: ClipTowers | str = DEFAULT_CLIP,
        scale: str = "cosine",
        template: str = "{title}",
    ) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")
        self.clip = clip if isinstance(clip, ClipTowers) else ClipTowers.from_pretrained(clip)
        self.scale = scale
        self.template = template
        self.freeze()

    @classmethod
    def from_sources(cls, sources: Any) -> RelevanceReward:
        return cls(sources.towers(), scale=sources.relevance_scale)

    def forward(
        self,
        images: torch.Tensor,
        titles: Sequence[str],
        users: torch.Tensor | None = None,
        **context: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.check_inputs(images, titles, users)
        img = self.clip.image_embeds(images)  # (B, E)
        txt = self.clip.text_embeds([self.template.format(title=t) for t in titles])  # (B, E)
        cos = (img * txt.to(img)).sum(-1)  # (B,)
        score = clip_score(cos, self.scale)
        return score, {"relevance_cosine": cos.detach()}
