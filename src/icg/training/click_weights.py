"""Position-debiased weights of the clicked covers stage A trains on.

A click is biased evidence of taste: the legacy ranker decides where a cover is shown, and a
cover at the top is clicked more whatever it looks like. Stage A's denoising loss weighs each
clicked cover by one of:

- ``"ips"``: ``w = 1 / exam(position)``, inverse propensity scoring with the examination curve
  the position-based preference model estimated (Joachims et al. 2017, "Unbiased Learning-to-Rank
  with Biased Feedback", Sec. 4).
- ``"advantage"``: ``w = exp(a(u, c) - mean_v a(u, v))``, how much more attractive the clicked
  cover ``c`` is for its clicker ``u`` than the item's average cover variant ``v``, under the
  preference model's attractiveness logit ``a`` (examination factored out). An exponentiated
  advantage with temperature 1, as in advantage-weighted regression (Peng et al. 2019, Sec. 3).

Both are clipped at ``max_weight`` and then self-normalised to mean 1 over all clicks
(Swaminathan & Joachims 2015, "The Self-Normalized Estimator for Counterfactual Learning").
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icg.layout import PREFERENCE_CONFIG_FILE
from icg.models.preference import PreferenceModel
from icg.rewards.clip import ClipTowers, embed_files
from icg.rewards.cover_inputs import CoverInputs
from icg.training.preference import CACHE_FILE

logger = logging.getLogger(__name__)

WEIGHTINGS = ("uniform", "ips", "advantage")


def check_preference_source(
    kind: str, preference: Path | None, setting: str = "click_weighting"
) -> None:
    """Raise when ``setting=kind`` needs a preference model folder and ``preference`` is not one
    (``"uniform"`` needs none)."""
    if kind == "uniform":
        return
    if preference is None:
        raise ValueError(
            f"preference: {setting}={kind!r} needs a trained preference model folder "
            "(RUN/preference, from `icg train preference`)"
        )
    if not (Path(preference) / PREFERENCE_CONFIG_FILE).is_file():
        raise ValueError(
            f"preference: expected a preference model folder with config.json, "
            f"got {str(preference)!r}"
        )


# ---- pure functions --------------------------------------------------------------------------
def normalised_weights(raw: torch.Tensor, max_weight: float) -> torch.Tensor:
    """``raw (N,)`` clipped to ``[0, max_weight]``, then divided by its mean (mean 1)."""
    clipped = raw.clamp(0.0, max_weight)
    return clipped / clipped.mean().clamp_min(1e-12)


def ips_weights(log_examination: torch.Tensor, max_weight: float) -> torch.Tensor:
    """IPS weights ``(N,)`` of clicks from ``log exam(position)`` ``(N,)`` (Joachims et al. 2017)."""
    return normalised_weights(torch.exp(-log_examination), max_weight)


def advantage_weights(
    clicked_logit: torch.Tensor, variant_mean_logit: torch.Tensor, max_weight: float
) -> torch.Tensor:
    """Exponentiated-advantage weights ``(N,)``: ``exp(a_clicked - mean_v a_v)``, clipped and
    normalised (Peng et al. 2019, Sec. 3, temperature 1)."""
    return normalised_weights(torch.exp(clicked_logit - variant_mean_logit), max_weight)


def weight_summary(weights: torch.Tensor) -> str:
    """Min, max and the Kish effective sample size fraction ``(Σw)² / (N Σw²)`` of weights."""
    ess = float(weights.sum() ** 2 / (len(weights) * (weights**2).sum()).clamp_min(1e-12))
    return f"min {float(weights.min()):.3f} max {float(weights.max()):.3f} ess {ess:.3f}"


# ---- advantages under a preference model -----------------------------------------------------
def item_variants(impressions: pd.DataFrame) -> dict[str, list[str]]:
    """Every cover shown for each item in the impressions table, sorted: ``{item_id: covers}``."""
    grouped = impressions.groupby(impressions["item_id"].astype(str))["cover"]
    return {item: sorted(set(map(str, covers))) for item, covers in grouped}


@torch.no_grad()
def cover_features(
    model, cover_embeddings: dict[str, torch.Tensor]
) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
    """``(row, taste, appeal)``: each cover's row in the preference model's cover taste
    ``(C, rank)`` and appeal ``(C,)``, covers in sorted order."""
    covers = sorted(cover_embeddings)
    taste, appeal = model.image_features(torch.stack([cover_embeddings[c] for c in covers]))
    return {c: k for k, c in enumerate(covers)}, taste, appeal


def user_embeddings_of(model, users: pd.DataFrame, user_ids) -> torch.Tensor | None:
    """The platform embeddings ``(N, user_dim)`` of ``user_ids`` from the users table, or
    ``None`` when the preference model takes no embedding."""
    if model.config.user_dim == 0:
        return None
    vectors = users.set_index("user_id")["embedding"]
    return torch.from_numpy(
        np.stack([np.asarray(vectors[u], dtype=np.float32) for u in user_ids])
    )  # (N, user_dim)


@torch.no_grad()
def click_advantages(
    model,
    clicks: pd.DataFrame,
    variants: dict[str, list[str]],
    cover_embeddings: dict[str, torch.Tensor],
    user_embeddings: torch.Tensor | None,
) -> torch.Tensor:
    """``a(u, c) - mean_v a(u, v)`` ``(N,)`` for each click (user ``u``, clicked cover ``c``,
    the item's variants ``v``).

    The attractiveness ``a = b + b_u + b_i + g(e) + <z_u, z(e)>`` (`PreferenceModel`) is affine
    in the cover's ``(g, z)``, so the mean over variants is ``a`` at the variants' mean ``(g, z)``;
    the user's and the item's biases cancel.

    Args:
        model: a `icg.models.preference.PreferenceModel`.
        clicks: ``N`` clicked impressions (``user_id``, ``item_id``, ``cover``).
        variants: the covers of each item (`item_variants`).
        cover_embeddings: the model's image input ``(input_dim,)`` of every cover named.
        user_embeddings: the clickers' platform embeddings ``(N, user_dim)`` (NaN rows: none).
    """
    row, taste, appeal = cover_features(model, cover_embeddings)
    items = sorted(set(clicks["item_id"].astype(str)))
    member = torch.zeros(len(items), len(row))  # (I, C): row-normalised variant membership
    for k, item in enumerate(items):
        member[k, [row[c] for c in variants[item]]] = 1.0 / len(variants[item])
    mean_taste, mean_appeal = member @ taste, member @ appeal  # (I, r), (I,)
    z_u, _ = model.user_vector(len(clicks), user_embeddings, model.user_index(clicks["user_id"]))
    clicked = torch.tensor([row[str(c)] for c in clicks["cover"]])  # (N,)
    item = torch.tensor([items.index(i) for i in clicks["item_id"].astype(str)])  # (N,)
    a_clicked = appeal[clicked] + (z_u * taste[clicked]).sum(-1)  # (N,)
    a_mean = mean_appeal[item] + (z_u * mean_taste[item]).sum(-1)  # (N,)
    return a_clicked - a_mean


# ---- the setup step --------------------------------------------------------------------------
def load_click_weights(
    kind: str,
    preference: str | Path,
    clicks: pd.DataFrame,
    impressions: pd.DataFrame,
    users: pd.DataFrame,
    max_weight: float,
    towers=None,
) -> torch.Tensor:
    """Weights ``(N,)`` of the clicked impressions ``clicks`` under the preference model saved in
    ``preference`` (``RUN/preference``).

    Args:
        kind: ``"ips"`` or ``"advantage"``.
        preference: the preference model's folder (its cover-embedding cache is reused).
        clicks: the clicked impressions, in training order.
        impressions: all impressions (the items' cover variants).
        users: the users table (``user_id``, ``embedding``).
        max_weight: clip before normalising.
        towers: the CLIP (default: the one recorded in the preference model).
    """

    if kind not in WEIGHTINGS[1:]:
        raise ValueError(f"click_weighting: expected one of {WEIGHTINGS[1:]}, got {kind!r}")
    model = PreferenceModel.from_pretrained(str(preference)).eval()
    if kind == "ips":
        if model.config.debias == "none":
            raise ValueError(
                f"preference: {preference} is a naive model (debias='none') with no examination "
                "curve; fit it with debias='pbm' or 'ips' for click_weighting='ips'"
            )
        positions = torch.tensor(clicks["position"].to_numpy(np.int64, copy=True))
        with torch.no_grad():
            return ips_weights(model.log_examination(positions), max_weight)
    variants = item_variants(impressions)
    paths = sorted({c for i in set(clicks["item_id"].astype(str)) for c in variants[i]})
    embeddings = _cover_embeddings(model, Path(preference), paths, towers)
    user_emb = user_embeddings_of(model, users, clicks["user_id"])
    advantage = click_advantages(model, clicks, variants, embeddings, user_emb)
    logger.info(
        "advantage of clicked covers over their item's mean variant: mean %.3f, std %.3f",
        float(advantage.mean()),
        float(advantage.std()) if len(advantage) > 1 else 0.0,
    )
    return advantage_weights(advantage, torch.zeros_like(advantage), max_weight)


def _cover_embeddings(model, preference: Path, paths: list[str], towers) -> dict[str, torch.Tensor]:
    """The preference model's image inputs (`CoverInputs`: the CLIP embedding first) of cover
    files, through its own cache."""

    if towers is None:
        name = model.config.clip_name_or_path
        if name is None:
            raise ValueError(f"preference: {preference} records no CLIP to embed covers with")
        towers = ClipTowers.from_pretrained(name)
    inputs = CoverInputs.for_model(getattr(towers, "towers", towers), model.config)
    emb = embed_files(inputs, paths, preference / CACHE_FILE)  # (C, input_dim)
    return dict(zip(paths, emb, strict=True))


# ---- preferred variants (stage A's ``targets="preferred"``) -----------------------------------
@torch.no_grad()
def preferred_variants(
    model,
    pairs: pd.DataFrame,
    variants: dict[str, list[str]],
    cover_embeddings: dict[str, torch.Tensor],
    user_embeddings: torch.Tensor | None,
) -> list[str]:
    """For each ``(user_id, item_id)`` row of ``pairs``, the item's cover variant the preference
    model finds most attractive for that user: ``argmax_v a(u, v)``, the variant-select choice
    (advantage-weighted regression at temperature 0, Peng et al. 2019).

    The user's and the item's biases cancel in the argmax, so only the cover's appeal and its
    taste match with the user decide; ties go to the first variant in sorted order.

    Args:
        model: a `icg.models.preference.PreferenceModel`.
        pairs: ``N`` rows of ``user_id``, ``item_id``.
        variants: the covers of each item (`item_variants`).
        cover_embeddings: the model's image input ``(input_dim,)`` of every cover named.
        user_embeddings: the users' platform embeddings ``(N, user_dim)`` (NaN rows: none).
    """
    row, taste, appeal = cover_features(model, cover_embeddings)
    z_u, _ = model.user_vector(len(pairs), user_embeddings, model.user_index(pairs["user_id"]))
    chosen: list[str] = []
    for k, item in enumerate(pairs["item_id"].astype(str)):
        rows = torch.tensor([row[c] for c in variants[item]])
        chosen.append(variants[item][int((appeal[rows] + taste[rows] @ z_u[k]).argmax())])
    return chosen


def preferred_covers(
    preference: str | Path,
    pairs: pd.DataFrame,
    impressions: pd.DataFrame,
    users: pd.DataFrame,
    towers=None,
) -> list[str]:
    """`preferred_variants` under the preference model saved in ``preference``, with the items'
    variants read from ``impressions`` and the users' embeddings from ``users``."""

    model = PreferenceModel.from_pretrained(str(preference)).eval()
    variants = item_variants(impressions)
    items = sorted(set(pairs["item_id"].astype(str)))
    paths = sorted({c for i in items for c in variants[i]})
    embeddings = _cover_embeddings(model, Path(preference), paths, towers)
    user_emb = user_embeddings_of(model, users, pairs["user_id"])
    return preferred_variants(model, pairs, variants, embeddings, user_emb)
