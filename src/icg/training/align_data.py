"""Stage A's training examples: which covers the denoising loss sees, for whom, with what weight.

Two kinds of targets (``AlignConfig.targets``):

- ``"clicks"``: every clicked impression ``(user, item, shown cover)``, optionally weighted to
  undo the position bias (`icg.training.click_weights`).
- ``"preferred"``: every ``(user, item)`` pair the platform showed, with the item's cover variant
  that the preference model, trained from the same click log, finds most attractive for that
  user (`preferred_covers`). A click is one noisy bit about one shown cover; the preference model
  pools every user's clicks, so its choice among the item's variants is a far cleaner and denser
  statement of the user's taste. The generator learns to draw what ``variant-select`` would
  pick, for any user embedding, without drawing K and picking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from icg.data.images import load_image
from icg.models.preference import PreferenceModel
from icg.models.user_prompt import UserPrompt, load_style_vocabulary
from icg.rewards.clip import ClipTowers
from icg.training.click_weights import (
    _cover_embeddings,
    item_variants,
    load_click_weights,
    preferred_covers,
    weight_summary,
)
from icg.training.common import clicked_impressions, encode_images
from icg.training.conditioning import PromptEncoder, TextConditioning
from icg.zoo.vocabulary import coverworld_style_vocabulary

logger = logging.getLogger(__name__)


@dataclass
class AlignData:
    """Stage A's examples, in training order."""

    item_ids: list[str]
    user_ids: list[str]
    latents: torch.Tensor  # (N, C, h, w) VAE latents of the target covers
    titles: dict[str, str]
    images: dict[str, object]
    user_vectors: dict[str, torch.Tensor]
    weights: torch.Tensor | None = None  # (N,) example weights, mean 1; None: uniform
    # title → the base's text conditioning of its prompt; "": the unconditional text
    text_states: dict[str, TextConditioning] = field(default_factory=dict)


def shown_pairs(impressions, items, users):
    """Every distinct ``(user_id, item_id)`` shown, with known item and user, sorted."""
    known = impressions[
        impressions["item_id"].isin(items["item_id"])
        & impressions["user_id"].isin(users["user_id"])
    ]
    pairs = known[["user_id", "item_id"]].drop_duplicates()
    return pairs.sort_values(["user_id", "item_id"], kind="stable").reset_index(drop=True)


def target_examples(config, data) -> tuple[list[str], list[str], list[str], torch.Tensor | None]:
    """``(item_ids, user_ids, covers, weights)`` of ``config.targets`` (see the module doc)."""
    if config.targets == "preferred":
        pairs = shown_pairs(data.impressions, data.items, data.users)
        covers = preferred_covers(config.preference, pairs, data.impressions, data.users)
        logger.info("stage A: the preferred variants of %d shown pairs", len(pairs))
        return pairs["item_id"].tolist(), pairs["user_id"].tolist(), covers, None
    clicks = clicked_impressions(data.impressions, data.items, data.users)
    weights = None
    if config.click_weighting != "uniform":
        weights = load_click_weights(
            config.click_weighting, config.preference, clicks, data.impressions, data.users,
            config.click_weight_max,
        )  # fmt: skip
        logger.info(
            "stage A: %s click weights, %s", config.click_weighting, weight_summary(weights)
        )
    return clicks["item_id"].tolist(), clicks["user_id"].tolist(), clicks["cover"].tolist(), weights


@torch.no_grad()
def prepare_align_data(config, data, vae, encoder: PromptEncoder, size: int) -> AlignData:
    """Load and encode stage A's examples: target covers with ``vae`` at ``size`` pixels, title
    prompts with the base pipeline's `PromptEncoder`."""

    if data.impressions is None or data.users is None or data.items is None:
        raise ValueError(f"{config.data}: stage A needs items, users and impressions")
    item_ids, user_ids, covers, weights = target_examples(config, data)
    if not item_ids:
        raise ValueError(f"{config.data}: no clicked impressions to train on")
    latents = encode_images(vae, covers, size)  # (N, c, h, w)
    items = data.items.set_index("item_id")
    needed = sorted(set(item_ids))
    titles = {i: str(items.at[i, "title"]) for i in needed}
    images = {i: load_image(items.at[i, "image"]) for i in needed}
    users = data.users.set_index("user_id")
    user_vectors = {
        u: torch.as_tensor(np.asarray(users.at[u, "embedding"], dtype=np.float32))
        for u in sorted(set(user_ids))
    }
    prepared = AlignData(item_ids, user_ids, latents, titles, images, user_vectors, weights)
    for title in titles.values():
        prompt = config.base_prompt.replace("{title}", title)
        prepared.text_states[title] = encoder(prompt)
    prepared.text_states[""] = encoder.unconditional()
    logger.info(
        "stage A: %d examples on %d items by %d users",
        len(item_ids), len(needed), len(user_vectors),
    )  # fmt: skip
    return prepared


@torch.no_grad()
def distil_user_prompt(config, data):
    """The `UserPrompt` of ``config.user_words`` words from the preference model in
    ``config.preference``, over the catalog's cover variants and ``config.style_vocabulary``
    (default: coverworld-tiny's); ``None`` when the preference model reads no user embedding."""

    preference = PreferenceModel.from_pretrained(str(config.preference)).eval()
    if preference.user_proj is None:
        logger.warning("stage A: %s reads no user embedding; no user words", config.preference)
        return None
    if config.style_vocabulary is not None:
        vocab = load_style_vocabulary(config.style_vocabulary)
    else:
        vocab = coverworld_style_vocabulary()
    name = preference.config.clip_name_or_path
    if name is None:
        logger.warning(
            "stage A: %s records no CLIP to tag covers; no user words", config.preference
        )
        return None
    towers = ClipTowers.from_pretrained(name)
    paths = sorted({c for covers in item_variants(data.impressions).values() for c in covers})
    embeddings = _cover_embeddings(preference, Path(config.preference), paths, towers)
    groups = list(vocab)
    prompt = UserPrompt.from_preference(
        preference,
        torch.stack([embeddings[p] for p in paths]),
        [towers.text_embeds(list(vocab[g].values())) for g in groups],
        groups,
        [list(vocab[g]) for g in groups],
        top_k=config.user_words,
    )
    logger.info("stage A: user words from %d covers, groups %s", len(paths), ", ".join(groups))
    return prompt
