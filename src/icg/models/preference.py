"""PreferenceModel: a personalized, position-debiased click model over cover images.

ICG (EMNLP 2025, Sec. 3.4) aligns covers with "a personalized preference model trained from user
behavior". Clicks are position-biased, so we fit a position-based model (PBM; Craswell et al.
2008; Joachims et al. 2017, Sec. 4):

    P(click | u, c, i, p) = exam(p) * sigmoid(a(u, c, i)),   exam(0) = 1

    a(u, c, i) = b + b_i + g(h_c) + <z_u, z(h_c)>,     h_c = cover features
    z_u = W (x_u - mu) / sigma + t_u + m

with ``x_u`` the platform user embedding, ``t_u`` a learned per-user vector (users with history;
zero for others), ``m`` the population mean taste (what a cold-start user gets), ``b_i`` an item
bias (zero for unseen items) and ``g`` the cover's global appeal. The reward uses ``a`` only:
examination is a property of the slot, not of the cover.

The cover features ``h_c`` read the normalised CLIP image embedding ``e_c`` and, by
``cover_encoder``, more of the cover (a pooled 64-d CLIP embedding does not see fine texture):

- ``"clip"``: ``e_c`` alone (the original architecture; old configs load as this).
- ``"conv"``: ``e_c`` and a small CNN over the cover's pixels at ``pixel_size``, trained jointly
  with the click model (image features learned from the click signal, as in DeepStyle or VBPR's
  end-to-end variants; He & McAuley 2016, "VBPR", Sec. 3 uses frozen CNN features instead).
- ``"patches"``: ``e_c`` and CLIP's per-patch tokens (hidden layer ``patch_layer``), through a
  learned token MLP and mean pooling.
- ``"spectrum"``: ``e_c`` and the log power spectrum of the grey cover in radial-frequency ×
  orientation bins (`power_spectrum_bins`), through a linear map: texture as oriented energy.

The model's image input is the row ``[e_c, extra]`` (`PreferenceModel.input_dim` wide), where
``extra`` is the flattened pixels, tokens or spectrum bins; `icg.rewards.cover_inputs.CoverInputs` computes it
from pixels, differentiably, so the model is a reward differentiable in the pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from icg.artifacts import CheckedLoadMixin

DEBIAS_MODES = ("pbm", "ips", "none")
COVER_ENCODERS = ("clip", "conv", "patches", "spectrum")


def spectrum_bin_index(size: int, bands: int, orientations: int) -> torch.Tensor:
    """Bin of each of the ``size × size`` 2-D frequencies ``(size * size,)``: radial band (up to
    the Nyquist radius; corners join the last band) times orientation (modulo pi)."""
    f = torch.fft.fftfreq(size) * size  # (size,) cycles per image
    fy, fx = torch.meshgrid(f, f, indexing="ij")
    radius = (fx.square() + fy.square()).sqrt()
    angle = torch.remainder(torch.atan2(fy, fx), torch.pi)
    band = (radius / (size / 2) * bands).long().clamp(max=bands - 1)
    orient = (angle / torch.pi * orientations).long().clamp(max=orientations - 1)
    return (band * orientations + orient).flatten()


def power_spectrum_bins(images: torch.Tensor, bands: int, orientations: int) -> torch.Tensor:
    """Log mean power of the grey image's 2-D spectrum per radial band × orientation bin:
    ``(B, 3, s, s)`` → ``(B, bands * orientations)``, differentiable in the pixels.

    The spectral-energy part of the GIST descriptor (Oliva & Torralba 2001, "Modeling the Shape
    of the Scene", Sec. 4): a texture is a peak of oriented energy at its frequency, which a
    pooled embedding of 16-px patches averages away.
    """
    size = images.shape[-1]
    if images.shape[-2] != size:
        raise ValueError(f"images: expected square (B, 3, s, s), got {tuple(images.shape)}")
    grey = images.mean(1)  # (B, s, s)
    grey = grey - grey.mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(grey).abs().square().flatten(1) / size**2  # (B, s * s)
    index = spectrum_bin_index(size, bands, orientations).to(images.device)
    member = F.one_hot(index, bands * orientations).to(power.dtype)  # (s * s, K)
    return torch.log1p((power @ member) / member.sum(0).clamp(min=1))  # (B, K)


class CoverConvNet(nn.Module):
    """A small CNN over cover pixels: ``(B, 3, s, s)`` in [0, 1] → ``(B, width)``.

    Three 3×3 convolutions (the first two with stride 2) and a global mean pool of the rectified
    responses: the mean energy of local filters, which is what tells stripes from dots from flat
    (texture statistics as pooled filter energies; Portilla & Simoncelli 2000, Sec. 3).
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels - 0.5).mean((-2, -1))  # (B, width)


class SpectrumHead(nn.Module):
    """Standardised spectrum bins through a linear map: ``(B, K)`` → ``(B, width)``; the
    standardisation (``mean``, ``std``) is set from the training covers."""

    def __init__(self, bins: int, width: int = 16) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(bins))
        self.register_buffer("std", torch.ones(bins))
        self.proj = nn.Linear(bins, width)

    def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj((spectrum - self.mean) / self.std))  # (B, width)


class PatchTokenHead(nn.Module):
    """CLIP patch tokens through a linear map of all of them: ``(B, T, D)`` → ``(B, width)``.

    Each token is layer-normalised, then the tokens are flattened, not pooled: where a patch sits
    (layout, scale) is part of what a cover looks like.
    """

    def __init__(self, tokens: int, token_dim: int, width: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(token_dim)
        self.proj = nn.Linear(tokens * token_dim, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(self.norm(tokens).flatten(1)))  # (B, width)


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
        cover_encoder: what else of the cover it reads (see the module doc); ``"clip"`` (the
            default) is the original architecture.
        pixel_size: ``"conv"``: the side of the pixel input.
        patch_tokens, patch_dim, patch_layer: ``"patches"``: tokens per cover, their width and
            the CLIP hidden layer they come from.
        spectrum_bands, spectrum_orientations: ``"spectrum"``: the bins of the power spectrum
            (computed at ``pixel_size``).
        encoder_width: width of the conv / patch features.
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
        cover_encoder: str = "clip",
        pixel_size: int = 64,
        patch_tokens: int = 0,
        patch_dim: int = 0,
        patch_layer: int = -1,
        encoder_width: int = 16,
        spectrum_bands: int = 12,
        spectrum_orientations: int = 8,
    ) -> None:
        super().__init__()
        if debias not in DEBIAS_MODES:
            raise ValueError(f"debias: expected one of {DEBIAS_MODES}, got {debias!r}")
        if num_positions < 1:
            raise ValueError(f"num_positions: expected >= 1, got {num_positions}")
        if cover_encoder not in COVER_ENCODERS:
            raise ValueError(
                f"cover_encoder: expected one of {COVER_ENCODERS}, got {cover_encoder!r}"
            )
        if cover_encoder == "patches" and (patch_tokens < 1 or patch_dim < 1):
            raise ValueError(
                f"patch_tokens, patch_dim: expected >= 1 for cover_encoder='patches', got "
                f"{patch_tokens}, {patch_dim}"
            )
        self.cover_net = None
        if cover_encoder == "conv":
            self.cover_net = CoverConvNet(encoder_width)
        elif cover_encoder == "patches":
            self.cover_net = PatchTokenHead(patch_tokens, patch_dim, encoder_width)
        elif cover_encoder == "spectrum":
            self.cover_net = SpectrumHead(spectrum_bands * spectrum_orientations, encoder_width)
        extra = 0 if self.cover_net is None else encoder_width
        self.image_in = nn.Linear(image_dim + extra, hidden_dim)
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

    @property
    def input_dim(self) -> int:
        """Width of the image input: the CLIP embedding, then the flattened pixels or tokens."""
        cfg = self.config
        if cfg.cover_encoder == "conv":
            return cfg.image_dim + 3 * cfg.pixel_size**2
        if cfg.cover_encoder == "patches":
            return cfg.image_dim + cfg.patch_tokens * cfg.patch_dim
        if cfg.cover_encoder == "spectrum":
            return cfg.image_dim + cfg.spectrum_bands * cfg.spectrum_orientations
        return cfg.image_dim

    def set_extra_normalisation(self, image_inputs: torch.Tensor) -> None:
        """``"spectrum"``: standardise its bins with the statistics of these image inputs
        ``(C, input_dim)`` (the training covers); a no-op for the other encoders."""
        if isinstance(self.cover_net, SpectrumHead):
            extra = image_inputs[:, self.config.image_dim :]  # (C, K)
            self.cover_net.mean.copy_(extra.mean(0))
            self.cover_net.std.copy_(extra.std(0).nan_to_num(1.0).clamp(min=1e-6))

    # ---- parts -----------------------------------------------------------------------------
    def image_features(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cover taste vector ``(B, rank)`` and global appeal ``(B,)`` from image inputs
        ``(B, input_dim)`` (`CoverInputs`; for ``"clip"`` just the embeddings ``(B, E)``)."""
        if image_embeds.shape[-1] != self.input_dim:
            raise ValueError(
                f"image_embeds: expected width {self.input_dim} (cover_encoder="
                f"{self.config.cover_encoder!r}), got {tuple(image_embeds.shape)}"
            )
        cfg = self.config
        x = image_embeds
        if self.cover_net is not None:
            emb, extra = image_embeds[:, : cfg.image_dim], image_embeds[:, cfg.image_dim :]
            if cfg.cover_encoder == "conv":
                extra = extra.reshape(-1, 3, cfg.pixel_size, cfg.pixel_size)  # (B, 3, s, s)
            elif cfg.cover_encoder == "patches":
                extra = extra.reshape(-1, cfg.patch_tokens, cfg.patch_dim)  # (B, T, D)
            x = torch.cat([emb, self.cover_net(extra)], -1)  # (B, E + width)
        h = F.gelu(self.image_in(x))  # (B, hidden)
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
