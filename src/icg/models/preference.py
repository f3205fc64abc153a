"""PreferenceModel: a personalized, position-debiased click model over cover images.

ICG (EMNLP 2025, Sec. 3.4) aligns covers with "a personalized preference model trained from user
behavior". Clicks are position-biased, so we fit a position-based model (PBM; Craswell et al.
2008; Joachims et al. 2017, Sec. 4):

    P(click | u, c, i, p) = exam(p) * sigmoid(a(u, c, i)),   exam(0) = 1

    a(u, c, i) = b + b_i + g(e_c) + <z_u, z(e_c)>,     e_c = normalised CLIP image embedding
    z_u = W (x_u - mu) / sigma + t_u + m

with ``x_u`` the platform user embedding, ``t_u`` a learned per-user vector (users with history;
zero for others), ``m`` the population mean taste (what a cold-start user gets), ``b_i`` an item
bias (zero for unseen items) and ``g`` the cover's global appeal. The reward uses ``a`` only:
examination is a property of the slot, not of the cover.

The model is differentiable in ``e_c``: chain it after `icg.rewards.clip.ClipTowers` to get a
reward differentiable in the pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from icg.artifacts import CheckedLoadMixin

DEBIAS_MODES = ("pbm", "ips", "none")


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends (Maechler 2012, "Accurately
    computing log(1 - exp(-|a|))", Sec. 2)."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931472, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def pbm_log_likelihood(
    attractiveness_logit: torch.Tensor, log_examination: torch.Tensor, clicked: torch.Tensor
) -> torch.Tensor:
    """Per-event log-likelihood ``(N,)`` of clicks under the position-based model.

    ``log P(click) = log exam(p) + log sigmoid(a)`` (Craswell et al. 2008, Sec. 2.2); the
    non-click term is ``log(1 - P(click))``.
    """
    log_p = log_examination + F.logsigmoid(attractiveness_logit)  # (N,)
    return torch.where(clicked.bool(), log_p, log1mexp(log_p))


def ips_loss(
    attractiveness_logit: torch.Tensor,
    clicked: torch.Tensor,
    propensity: torch.Tensor,
    clip: float = 0.05,
) -> torch.Tensor:
    """Per-event IPS-corrected pointwise loss ``(N,)`` with clipped propensities.

    Saito et al. 2020 ("Unbiased Recommender Learning from Missing-Not-At-Random Implicit
    Feedback", Eq. 6): ``-(c/θ) log σ(a) - (1 - c/θ) log(1 - σ(a))`` with ``θ = max(exam(p), clip)``
    (clipping bounds the variance, Sec. 4.3).
    """
    w = clicked.float() / propensity.clamp(min=clip)  # (N,)
    return -(w * F.logsigmoid(attractiveness_logit) + (1 - w) * F.logsigmoid(-attractiveness_logit))


class PreferenceModel(CheckedLoadMixin, ModelMixin, ConfigMixin):
    """Click model ``exam(position) × sigmoid(attractiveness(user, cover, item))``.

    Args:
        image_dim: width of the (L2-normalised) CLIP image embeddings.
        user_dim: width of the platform user embeddings (0: none).
        num_users: rows of the learned per-user table (0: none); ``user_ids`` names them.
        num_items: rows of the item-bias table (0: none); ``item_ids`` names them.
        num_positions: positions with their own examination; later positions share the last.
        rank: width of the user/cover taste space.
        hidden_dim: width of the cover MLP.
        debias: ``"pbm"`` (examination fitted jointly), ``"ips"`` (clipped inverse propensities)
            or ``"none"`` (naive: every impression counts as examined).
        clip_name_or_path: the CLIP whose image embeddings this model reads.
        user_ids, item_ids: the ids of the table rows (for lookups by id).
    """

    @register_to_config
    def __init__(
        self,
        image_dim: int,
        user_dim: int = 0,
        num_users: int = 0,
        num_items: int = 0,
        num_positions: int = 10,
        rank: int = 32,
        hidden_dim: int = 128,
        debias: str = "pbm",
        clip_name_or_path: str | None = None,
        user_ids: list[str] | None = None,
        item_ids: list[str] | None = None,
    ) -> None:
        super().__init__()
        if debias not in DEBIAS_MODES:
            raise ValueError(f"debias: expected one of {DEBIAS_MODES}, got {debias!r}")
        if num_positions < 1:
            raise ValueError(f"num_positions: expected >= 1, got {num_positions}")
        self.image_in = nn.Linear(image_dim, hidden_dim)
        self.image_taste = nn.Linear(hidden_dim, rank)
        self.image_appeal = nn.Linear(hidden_dim, 1)
        self.bias = nn.Parameter(torch.zeros(()))
        self.mean_taste = nn.Parameter(torch.zeros(rank))
        self.user_proj = nn.Linear(user_dim, rank, bias=False) if user_dim > 0 else None
        self.register_buffer("user_mean", torch.zeros(max(user_dim, 0)))
        self.register_buffer("user_std", torch.ones(max(user_dim, 0)))
        self.user_table = nn.Embedding(num_users, rank) if num_users > 0 else None
        self.user_bias = nn.Embedding(num_users, 1) if num_users > 0 else None
        self.item_bias = nn.Embedding(num_items, 1) if num_items > 0 else None
        for table in (self.user_table, self.user_bias, self.item_bias):
            if table is not None:
                nn.init.zeros_(table.weight)
        # log exam(p) = -softplus(theta_p) for p >= 1; exam(0) = 1 is fixed
        self.position_theta = nn.Parameter(torch.full((num_positions - 1,), -1.0))
        self._user_rows = {u: k for k, u in enumerate(user_ids or [])}
        self._item_rows = {i: k for k, i in enumerate(item_ids or [])}

    # ---- lookups ---------------------------------------------------------------------------
    def user_index(self, user_ids) -> torch.Tensor:
        """Rows of the user table for ids (``-1``: unknown, i.e. no history)."""
        return torch.tensor([self._user_rows.get(str(u), -1) for u in user_ids], dtype=torch.long)

    def item_index(self, item_ids) -> torch.Tensor:
        """Rows of the item-bias table for ids (``-1``: unknown item)."""
        return torch.tensor([self._item_rows.get(str(i), -1) for i in item_ids], dtype=torch.long)

    def set_user_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise platform embeddings with these statistics (``(user_dim,)`` each)."""
        self.user_mean.copy_(mean)
        self.user_std.copy_(std.clamp(min=1e-6))

    # ---- parts -----------------------------------------------------------------------------
    def image_features(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cover taste vector ``(B, rank)`` and global appeal ``(B,)`` from embeddings ``(B, E)``."""
        h = F.gelu(self.image_in(image_embeds))  # (B, hidden)
        return self.image_taste(h), self.image_appeal(h).squeeze(-1)

    def user_vector(
        self,
        batch: int,
        user_embeddings: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """User taste ``(B, rank)`` and click propensity ``(B,)``; a user with no embedding (a NaN
        row or ``None``) and no history gets the population mean taste."""
        z = self.mean_taste.expand(batch, -1)  # (B, rank)
        propensity = self.bias.expand(batch)  # (B,)
        if user_embeddings is not None and self.user_proj is not None:
            finite = torch.isfinite(user_embeddings).all(-1, keepdim=True)  # (B, 1)
            x = (user_embeddings.to(self.user_mean.dtype) - self.user_mean) / self.user_std
            z = z + self.user_proj(torch.where(finite, x, 0.0))
        if user_index is not None and self.user_table is not None:
            known = (user_index >= 0).unsqueeze(-1)  # (B, 1)
            rows = user_index.clamp(min=0)
            z = z + torch.where(known, self.user_table(rows), 0.0)
            propensity = propensity + torch.where(known, self.user_bias(rows), 0.0).squeeze(-1)
        return z, propensity

    def item_offset(self, item_index: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Item bias ``(B,)`` (zero for unknown items or when there is no item table)."""
        if item_index is None or self.item_bias is None:
            return self.bias.new_zeros(batch)
        known = item_index >= 0
        return torch.where(known, self.item_bias(item_index.clamp(min=0)).squeeze(-1), 0.0)

    def log_examination(self, position: torch.Tensor) -> torch.Tensor:
        """``log exam(p)`` ``(N,)``: 0 at position 0, learned below (PBM, Craswell et al. 2008)."""
        log_exam = torch.cat([self.bias.new_zeros(1), -F.softplus(self.position_theta)])  # (P,)
        return log_exam[position.clamp(0, len(log_exam) - 1)]

    def attractiveness_logit(
        self,
        image_embeds: torch.Tensor,
        user_embeddings: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
        item_index: torch.Tensor | None = None,
        image_features: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logit of P(click | examined) ``(B,)``.

        Args:
            image_embeds: L2-normalised CLIP image embeddings ``(B, E)`` (may carry gradients).
            user_embeddings: platform embeddings ``(B, user_dim)``; NaN rows or ``None``: no user.
            user_index: user-table rows ``(B,)``; ``-1``: no history.
            item_index: item-table rows ``(B,)``; ``-1``: unknown item.
            image_features: precomputed :meth:`image_features` (then ``image_embeds`` is unused).
        """
        z_c, appeal = (
            image_features if image_features is not None else self.image_features(image_embeds)
        )
        z_u, propensity = self.user_vector(z_c.shape[0], user_embeddings, user_index)
        taste = (z_u * z_c).sum(-1)  # (B,)
        return propensity + self.item_offset(item_index, z_c.shape[0]) + appeal + taste

    def forward(
        self,
        image_embeds: torch.Tensor,
        user_embeddings: torch.Tensor | None = None,
        user_index: torch.Tensor | None = None,
        item_index: torch.Tensor | None = None,
        position: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Attractiveness logit, log examination and log P(click), each ``(B,)``."""
        a = self.attractiveness_logit(image_embeds, user_embeddings, user_index, item_index)
        if position is None or self.config.debias == "none":
            log_exam = torch.zeros_like(a)
        else:
            log_exam = self.log_examination(position)
        return {
            "attractiveness_logit": a,
            "log_examination": log_exam,
            "log_p_click": log_exam + F.logsigmoid(a),
        }
