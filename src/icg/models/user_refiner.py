"""UserRefiner: personalizes item features with a user embedding (ICG, EMNLP 2025, Sec. 3.2).

The refiner conditions the item features ``F (B, K, D)`` on a user vector ``u`` with a FiLM
residual whose gate starts at zero (adaLN-Zero, Peebles & Xie 2023, Sec. 3.2):

    C = F + gate(u) * (LN(F) * (1 + scale(u)) + shift(u)),   gate, scale, shift = W u,  W = 0 at init

so an untrained refiner is the identity, and so is any item without a user (cold start:
``user_embeddings=None`` or ``user_mask=False``), bit for bit.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from icg.artifacts import CheckedLoadMixin


class UserRefiner(CheckedLoadMixin, ModelMixin, ConfigMixin):
    """FiLM refinement of item features by the platform's user embedding.

    Args:
        feature_dim: ``D``, width of the item features.
        user_dim: width of the platform user embeddings.
        hidden_dim: width of the user context.
    """

    @register_to_config
    def __init__(self, feature_dim: int, user_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        if user_dim <= 0:
            raise ValueError(f"user_dim: expected > 0, got {user_dim}")
        self.user_proj = nn.Linear(user_dim, hidden_dim)
        self.norm = nn.LayerNorm(feature_dim, elementwise_affine=False)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(hidden_dim, 3 * feature_dim))
        nn.init.zeros_(self.film[1].weight)  # zero-initialised residual gate
        nn.init.zeros_(self.film[1].bias)

    def user_context(self, user_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """User context ``(B, hidden)`` and a mask ``(B,)`` of rows that have a user (finite)."""
        if user_embeddings.shape[-1] != self.config.user_dim:
            raise ValueError(
                f"user_embeddings: expected width {self.config.user_dim}, "
                f"got {user_embeddings.shape[-1]}"
            )
        finite = torch.isfinite(user_embeddings).all(-1)  # (B,)
        emb = torch.where(finite[:, None], user_embeddings, 0.0)
        return self.user_proj(emb.to(self.user_proj.weight.dtype)), finite

    def forward(
        self,
        features: torch.Tensor,
        user_embeddings: torch.Tensor | None = None,
        user_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Personalize item features.

        Args:
            features: item features ``(B, K, D)``.
            user_embeddings: platform user embeddings ``(B, user_dim)``; a row of NaN means no user.
            user_mask: ``(B,)`` bool, ``False`` where the item has no user (cold start).

        Returns:
            Personalized context ``(B, K, D)``; rows without a user equal ``features`` exactly.
        """
        if user_embeddings is None:
            return features
        context, has_user = self.user_context(user_embeddings)
        if user_mask is not None:
            has_user = has_user & user_mask.to(device=has_user.device, dtype=torch.bool)
        shift, scale, gate = (
            self.film(context).to(features.dtype).unsqueeze(1).chunk(3, dim=-1)
        )  # (B, 1, D) each
        refined = features + gate * (self.norm(features) * (1 + scale) + shift)  # (B, K, D)
        return torch.where(has_user[:, None, None], refined, features)
