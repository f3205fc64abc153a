"""Aesthetic reward: a LAION-aesthetic-predictor-shaped MLP over CLIP image embeddings.

Schuhmann et al. 2022 (LAION-5B, Sec. 4 / the "improved aesthetic predictor"): a linear MLP on
L2-normalised CLIP image embeddings. We load the shipped ``zoo:aesthetic`` (a ``save_pretrained``
folder of `icg.zoo.aesthetic.AestheticMLP` over ``zoo:clip``) or the published LAION file
(``sac+logos+ava1-l14-linearMSE.pth``, keys ``layers.{0,2,4,6,7}.*``, over CLIP ViT-L/14).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icg.config import DEFAULT_AESTHETIC, DEFAULT_CLIP
from icg.rewards.base import Reward, register_reward
from icg.rewards.clip import ClipTowers, resolve_name
from icg.zoo.aesthetic import AestheticMLP


def load_aesthetic_predictor(name_or_path: str | Path) -> nn.Module:
    """An `AestheticMLP` from a ``save_pretrained`` folder, ``zoo:aesthetic``, or a LAION
    ``.safetensors`` state dict. A pickle-format ``.pth`` is refused (`ArtifactError`): convert
    a checkpoint you trust once, e.g. ``save_file(torch.load(p, weights_only=True), out)``."""
    path = Path(resolve_name(name_or_path, "aesthetic predictor"))
    if path.is_dir():
        return AestheticMLP.from_pretrained(path)
    if path.is_file():
        return AestheticMLP.from_laion(path)
    raise FileNotFoundError(f"aesthetic predictor {name_or_path!r}: no folder or file at {path}")


@register_reward("aesthetic")
class AestheticReward(Reward):
    """Predicted aesthetic score of each image.

    Args:
        clip: the CLIP the predictor reads (`ClipTowers`, or a name/path; default ``zoo:clip``).
        predictor: an MLP ``(B, E) → (B, 1)`` or a name/path (default ``zoo:aesthetic``).
    """

    def __init__(
        self,
        clip: ClipTowers | str = DEFAULT_CLIP,
        predictor: nn.Module | str = DEFAULT_AESTHETIC,
    ) -> None:
        super().__init__()
        self.clip = clip if isinstance(clip, ClipTowers) else ClipTowers.from_pretrained(clip)
        self.predictor = (
            predictor if isinstance(predictor, nn.Module) else load_aesthetic_predictor(predictor)
        )
        self.freeze()

    @classmethod
    def from_sources(cls, sources: Any) -> AestheticReward:
        return cls(sources.towers(), sources.aesthetic_predictor)

    def forward(
        self,
        images: torch.Tensor,
        titles: Sequence[str],
        users: torch.Tensor | None = None,
        **context: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.check_inputs(images, titles, users)
        emb = self.clip.image_embeds(images)  # (B, E)
        score = self.predictor(emb).squeeze(-1)  # (B,)
        return score, {"aesthetic": score.detach()}
