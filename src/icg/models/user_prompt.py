"""UserPrompt: a user's taste as words in the base model's text prompt.

The base model's text conditioning already controls style ("a cover for <title>, dark, a thick
frame"), and that is where taste lives. The UserPrompt picks, per user embedding, a level in each
group of a style vocabulary (``{"brightness": {"dark": ..., "light": ...}, ...}``) and appends
the ``top_k`` groups the user cares most about to the prompt.

Nothing here is labelled. It is distilled from the click-trained preference model
(`icg.models.preference`) and a CLIP:

1. CLIP zero-shot tags every catalog cover with one level per group (image against the level
   texts);
2. a level's direction in taste space is the mean taste vector of the covers tagged with it;
3. a user's score for a level is that direction against the user's taste ``z(e)``, which is
   affine in the platform embedding ``e``, so the whole map is one ``nn.Linear(user_dim, P)``.

Per group the user gets the best-scored level; groups are ranked by how much the best level
beats the group's median level (a user indifferent to a group gets no words for it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from icg.artifacts import CheckedLoadMixin, read_json_object


class UserPrompt(CheckedLoadMixin, ModelMixin, ConfigMixin):
    """Style words for user embeddings.

    Args:
        user_dim: width of the platform user embeddings.
        groups: the vocabulary's group names, e.g. ``["brightness", "frame"]``.
        phrases: per group, the words of each level, e.g. ``[["dark", "light"], ...]``.
        top_k: how many groups' words a user gets.
    """

    @register_to_config
    def __init__(
        self, user_dim: int, groups: list[str], phrases: list[list[str]], top_k: int = 2
    ) -> None:
        super().__init__()
        if len(groups) != len(phrases) or not groups or any(len(p) < 2 for p in phrases):
            raise ValueError("groups/phrases: expected one list of >= 2 phrases per group")
        if top_k < 1:
            raise ValueError(f"top_k: expected >= 1, got {top_k}")
        self.score = nn.Linear(user_dim, sum(len(p) for p in phrases))
        self.requires_grad_(False)  # distilled, not trained

    @torch.no_grad()
    def words(self, user_embeddings: torch.Tensor) -> list[list[str]]:
        """Per row of ``(B, user_dim)`` embeddings, its words (a NaN row: none), best group first."""
        finite = torch.isfinite(user_embeddings).all(-1)
        emb = torch.where(finite[:, None], user_embeddings, 0.0).to(self.score.weight.dtype)
        scores = self.score(emb)  # (B, P)
        out: list[list[str]] = []
        for row, ok in zip(scores, finite.tolist(), strict=True):
            if not ok:
                out.append([])
                continue
            chosen, start = [], 0
            for phrases in self.config.phrases:
                s = row[start : start + len(phrases)]
                start += len(phrases)
                margin = float(s.max() - s.median())
                chosen.append((margin, phrases[int(s.argmax())]))
            ranked = sorted(range(len(chosen)), key=lambda g: -chosen[g][0])
            out.append([chosen[g][1] for g in ranked[: self.config.top_k]])
        return out

    def prompts(self, prompts: list[str], user_embeddings: torch.Tensor | None) -> list[str]:
        """``prompts`` with each row's words appended (``"<prompt>, dark, a thick frame"``)."""
        if user_embeddings is None:
            return list(prompts)
        words = self.words(torch.as_tensor(user_embeddings))
        return [", ".join([p, *w]) for p, w in zip(prompts, words, strict=True)]

    @classmethod
    @torch.no_grad()
    def from_preference(
        cls,
        preference,
        cover_embeddings: torch.Tensor,
        level_text_embeddings: list[torch.Tensor],
        groups: list[str],
        phrases: list[list[str]],
        top_k: int = 2,
    ) -> UserPrompt:
        """Distil a UserPrompt from a preference model (see the module doc).

        Args:
            preference: a `icg.models.preference.PreferenceModel` that reads user embeddings.
            cover_embeddings: ``(C, E)`` L2-normalised CLIP embeddings of the catalog's covers
                (the preference model's CLIP), or its wider image inputs, which start with them.
            level_text_embeddings: per group, ``(L_g, E)`` CLIP text embeddings of its levels.
            groups, phrases, top_k: as in the constructor.
        """
        if preference.user_proj is None:
            raise ValueError("preference: the model reads no user embedding (user_dim=0)")
        taste, _ = preference.image_features(cover_embeddings)  # (C, rank)
        directions = []
        for text in level_text_embeddings:
            clip = cover_embeddings[:, : text.shape[1]]  # (C, E): inputs start with CLIP's
            tags = (clip @ text.T).argmax(1)  # (C,) zero-shot level per cover
            for level in range(len(text)):
                tagged = tags == level
                directions.append(
                    taste[tagged].mean(0) if tagged.any() else torch.zeros_like(taste[0])
                )
        m = torch.stack(directions)  # (P, rank)
        proj = preference.user_proj.weight  # (rank, user_dim)
        mean, std = preference.user_mean, preference.user_std
        model = cls(user_dim=proj.shape[1], groups=groups, phrases=phrases, top_k=top_k)
        # score(e) = m · (mean_taste + proj((e - mean) / std))
        model.score.weight.copy_((m @ proj) / std)
        model.score.bias.copy_(m @ (preference.mean_taste - proj @ (mean / std)))
        return model


def load_style_vocabulary(path) -> dict[str, dict[str, str]]:
    """Read a style vocabulary JSON file: ``{"group": {"phrase": "CLIP text", ...}, ...}``,
    at least two phrases per group; a clear error names the file and the bad group."""

    vocab = read_json_object(Path(path), "the style vocabulary")
    if not vocab:
        raise ValueError(f"{path}: the style vocabulary has no groups")
    for group, levels in vocab.items():
        if (
            not isinstance(levels, dict)
            or len(levels) < 2
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in levels.items())
        ):
            raise ValueError(
                f"{path}: group {group!r} must map >= 2 phrases to CLIP texts (strings)"
            )
    return vocab
