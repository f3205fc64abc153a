"""Stage B's pair pool: the (user, item) pairs of the logs that covers are sampled for, and
everything sampling needs of them encoded once (titles' text states, item images, user vectors,
reference latents, clicked covers for the drift regulariser).

`build_pool` is a function of the dataset, the config and the frozen models it is given; both
stage-B trainers (`icg.training.draft`, `icg.training.ranked`) read the `PairPool` it returns
through `icg.training.stage_b.StageBTrainer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from icg.data.images import load_image
from icg.training.common import clicked_examples, default_size, encode_images, vae_scale_factor
from icg.training.conditioning import PromptEncoder, TextConditioning
from icg.training.reward_config import RewardConfig

logger = logging.getLogger(__name__)


@dataclass
class PairPool:
    """The (user, item) pool of stage B and its encodings.

    Args:
        pairs: distinct (user_id, item_id) rows of the impressions, sorted (a fixed order).
        titles: item_id → title.
        item_images: item_id → reference image (PIL).
        user_vectors: user_id → embedding ``(E,)``.
        user_dim: ``E`` (0: the platform has no user embeddings).
        vae_scale: pixels per latent cell.
        size: the sampled covers' side in pixels.
        conditions: the base pipeline's text conditioning per title (`TextConditioning`:
            states ``(L, C_text)``, and pooled text / time ids where the family has them);
            ``""``: the unconditional text of the base's classifier-free guidance.
        ref_latents: item_id → reference latent ``(C, h, w)`` (``strength < 1`` only).
        clicks: (item_ids, user_ids) of clicked impressions (the drift regulariser only).
        click_latents: ``(N, C, h, w)`` latents of those clicked covers.
    """

    pairs: pd.DataFrame
    titles: dict[str, str]
    item_images: dict[str, object]
    user_vectors: dict[str, torch.Tensor]
    user_dim: int
    vae_scale: int
    size: int
    conditions: dict[str, TextConditioning] = field(default_factory=dict)
    ref_latents: dict[str, torch.Tensor] = field(default_factory=dict)
    clicks: tuple[list[str], list[str]] | None = None
    click_latents: torch.Tensor | None = None

    @property
    def text(self) -> dict[str, torch.Tensor]:
        """The text states ``(L, C_text)`` per title (``""``: unconditional), without the rest of
        the conditioning (all of SD1.x's)."""
        return {key: c.states for key, c in self.conditions.items()}

    def text_states(self, items: list[str]) -> torch.Tensor:
        """``(B, L, C_text)`` text states of the items' titles."""
        return torch.stack([self.conditions[self.titles[i]].states for i in items])

    def conditioning(self, items: list[str]) -> TextConditioning:
        """The batch's text conditioning ``(B, ...)`` of the items' titles."""
        return TextConditioning.stack([self.conditions[self.titles[i]] for i in items])

    def unconditional(self, n: int) -> TextConditioning:
        """The unconditional text conditioning, as a batch of ``n``."""
        return self.conditions[""].expand(n)


@torch.no_grad()
def build_pool(cfg: RewardConfig, data, base, model) -> PairPool:
    """The pair pool of a dataset, encoded with the frozen base pipeline ``base`` (its text
    encoders, as its own ``encode_prompt``, and its VAE) and the prompt format of the ICG
    ``model`` stage A trained.

    Raises:
        ValueError: the dataset lacks items, users or impressions, or the drift regulariser
            needs clicked impressions and there are none.
    """
    if data.impressions is None or data.users is None or data.items is None:
        raise ValueError(f"{cfg.data}: stage B needs items, users and impressions")
    imp = data.impressions
    pairs = (
        imp[["user_id", "item_id"]]
        .astype(str)
        .drop_duplicates()
        .sort_values(["user_id", "item_id"])
        .reset_index(drop=True)
    )  # the (user, item) pool, in a fixed order
    items = data.items.set_index("item_id")
    users = data.users.set_index("user_id")
    vae_scale = vae_scale_factor(base.vae)
    pool = PairPool(
        pairs=pairs,
        titles={str(i): str(items.at[i, "title"]) for i in items.index},
        item_images={str(i): load_image(items.at[i, "image"]) for i in items.index},
        user_vectors={
            str(u): torch.as_tensor(np.asarray(users.at[u, "embedding"], dtype=np.float32))
            for u in users.index
        },
        user_dim=data.embedding_dim,
        vae_scale=vae_scale,
        size=cfg.resolution or default_size(base),
    )
    if cfg.strength < 1:
        ids = sorted(pool.item_images)
        latents = encode_images(base.vae, [pool.item_images[i] for i in ids], pool.size)
        pool.ref_latents = dict(zip(ids, latents, strict=True))
    titles = sorted(set(pool.titles.values()))
    prompts = model.adapter.prompts(titles)  # the prompt format stage A trained with
    encoder = PromptEncoder(base, pool.size)
    for title, prompt in zip(titles, prompts, strict=True):
        pool.conditions[title] = encoder(prompt)
    pool.conditions[""] = encoder.unconditional()
    if cfg.drift_denoise_weight > 0:
        item_ids, user_ids, covers = clicked_examples(imp, data.items, data.users)
        if not item_ids:
            raise ValueError(f"{cfg.data}: drift_denoise_weight > 0 needs clicked impressions")
        pool.clicks = (item_ids, user_ids)
        pool.click_latents = encode_images(base.vae, covers, pool.size)
    logger.info("stage B: %d (user, item) pairs, %d items", len(pairs), len(pool.titles))
    return pool
