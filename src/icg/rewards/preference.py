"""Personalized preference reward: the trained `PreferenceModel`'s attractiveness of a cover.

ICG (EMNLP 2025, Sec. 3.4). The reward is the attractiveness logit ``a(user, cover)``: the
click model with examination factored out (where a cover is shown is not the cover's merit)
and without the item bias (constant for a given item, and unknown for new items). Pixels →
`CoverInputs` (CLIP image tower → normalised embedding, plus the pixels or patch tokens the
model's cover encoder reads) → preference model, all differentiable in the pixels.
Cold-start users (``users=None`` or a NaN row, unknown id) get the population mean taste.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from icg.models.preference import PreferenceModel
from icg.rewards.base import Reward, register_reward
from icg.rewards.clip import ClipTowers
from icg.rewards.cover_inputs import CoverInputs

OUTPUTS = ("logit", "probability")


@register_reward("preference")
class PreferenceReward(Reward):
    """Attractiveness of each image for its user under the trained preference model.

    Args:
        model: a `PreferenceModel` or the folder it was saved to (``RUN/preference``).
        clip: `ClipTowers` (or `CoverInputs`) or name/path; default the CLIP recorded in the
            model's config. It must be the CLIP the model was trained on. ``self.clip`` is the
            `CoverInputs` the model reads (``image_embeds`` gives its image input).
        output: ``"logit"`` (default; unbounded, well-scaled gradients) or ``"probability"``
            (P(click | examined)).
    """

    def __init__(
        self,
        model: PreferenceModel | str | Path,
        clip: ClipTowers | CoverInputs | str | None = None,
        output: str = "logit",
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output: expected one of {OUTPUTS}, got {output!r}")
        if not isinstance(model, PreferenceModel):
            model = PreferenceModel.from_pretrained(str(model))
        if clip is None:
            clip = model.config.clip_name_or_path
            if clip is None:
                raise ValueError("clip: the preference model records no CLIP; pass clip=")
        self.model = model
        if isinstance(clip, CoverInputs):
            clip = clip.towers
        towers = clip if isinstance(clip, ClipTowers) else ClipTowers.from_pretrained(clip)
        self.clip = CoverInputs.for_model(towers, model.config)
        if self.clip.embed_dim != model.input_dim:
            raise ValueError(
                f"clip: image inputs of width {self.clip.embed_dim}, but the preference model "
                f"expects {model.input_dim} (cover_encoder={model.config.cover_encoder!r})"
            )
        self.output = output
        self.freeze()

    @classmethod
    def from_sources(cls, sources: Any) -> PreferenceReward:
        if sources.preference is None:
            raise ValueError("preference: the preference reward needs a preference model")
        model = PreferenceModel.from_pretrained(str(sources.preference))
        return cls(model, sources.towers(model.config.clip_name_or_path))

    def forward(
        self,
        images: torch.Tensor,
        titles: Sequence[str],
        users: torch.Tensor | None = None,
        user_ids: Sequence[str | None] | None = None,
        **context: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Args beyond the contract: ``user_ids`` (``B`` ids or ``None``) adds each known user's
        learned vector (users with history)."""
        self.check_inputs(images, titles, users)
        emb = self.clip.image_embeds(images)  # (B, input_dim)
        index = None
        if user_ids is not None:
            index = self.model.user_index(["" if u is None else u for u in user_ids]).to(emb.device)
        if users is not None:
            users = users.to(emb.device)
        logit = self.model.attractiveness_logit(emb, users, index)  # (B,)
        score = logit if self.output == "logit" else torch.sigmoid(logit)
        return score, {"preference_probability": torch.sigmoid(logit).detach()}
