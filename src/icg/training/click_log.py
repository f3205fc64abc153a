"""Click logs as index tensors: reading a data folder for the preference model.

Two kinds of logs:
- impressions (event_id, user_id, item_id, cover, position, clicked, timestamp): the platform's
  log; positions matter.
- implicit feedback (user_id, item_id, timestamp): positives only; negatives are sampled
  (`icg.data.read_implicit_feedback`), the cover is the item's reference image, and there is no
  position (everything is at position 0, so debiasing is a no-op).

Each distinct cover is embedded once (`icg.rewards.cover_inputs.CoverInputs`: the CLIP
embedding, plus pixels or patch tokens by ``cfg.cover_encoder``), through a safetensors cache.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from icg.data import find_table_file, load_dataset, read_implicit_feedback
from icg.rewards.clip import ClipTowers, embed_files
from icg.rewards.cover_inputs import CoverInputs

if TYPE_CHECKING:
    from icg.training.preference import PreferenceConfig

logger = logging.getLogger(__name__)


@dataclass
class ClickLog:
    """Impressions as index tensors, all ``(N,)``.

    Args:
        user: row in the user list (``-1``: unknown).
        item: row in the item list.
        cover: row in the cover-embedding table.
        position: display position (0 = top).
        clicked: 0/1 float.
        timestamp: int64 seconds.
        event_id: the event ids (``None`` for implicit feedback).
    """

    user: torch.Tensor
    item: torch.Tensor
    cover: torch.Tensor
    position: torch.Tensor
    clicked: torch.Tensor
    timestamp: torch.Tensor
    event_id: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)

    def subset(self, idx: torch.Tensor) -> ClickLog:
        ev = None if self.event_id is None else self.event_id[idx.numpy()]
        return ClickLog(
            self.user[idx], self.item[idx], self.cover[idx], self.position[idx],
            self.clicked[idx], self.timestamp[idx], ev,
        )  # fmt: skip


@dataclass
class PreferenceData:
    """Everything the fit needs, as tensors.

    Args:
        log: the click log.
        cover_embeddings: ``(C, E)`` L2-normalised CLIP image embeddings, or the preference
            model's wider image inputs (`CoverInputs`) as ``input_layout`` says.
        user_ids: ``U`` user ids (``log.user`` indexes them).
        item_ids: ``I`` item ids.
        user_embeddings: ``(U, D)`` platform embeddings (NaN rows: none), or ``None``.
        cover_paths: ``C`` cover files (informational).
        input_layout: `PreferenceModel` config fields that read ``cover_embeddings``
            (``cover_encoder``, ``image_dim``, ...); ``None``: plain CLIP embeddings.
    """

    log: ClickLog
    cover_embeddings: torch.Tensor
    user_ids: list[str]
    item_ids: list[str]
    user_embeddings: torch.Tensor | None = None
    cover_paths: list[str] = field(default_factory=list)
    input_layout: dict | None = None


def input_layout(inputs: CoverInputs) -> dict:
    """The `PreferenceModel` config fields that read what ``inputs`` computes."""
    tokens, width = inputs.patch_shape
    patches = inputs.cover_encoder == "patches"
    return {
        "cover_encoder": inputs.cover_encoder,
        "image_dim": inputs.towers.embed_dim,
        "pixel_size": inputs.pixel_size,
        "patch_tokens": tokens if patches else 0,
        "patch_dim": width if patches else 0,
        "patch_layer": inputs.patch_layer,
        "spectrum_bands": inputs.bands,
        "spectrum_orientations": inputs.orientations,
    }


def time_split(timestamp: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices: the last ``val_fraction`` of events by time are validation."""
    order = torch.argsort(timestamp, stable=True)
    n_val = int(round(len(order) * val_fraction))
    return order[: len(order) - n_val], order[len(order) - n_val :]


def detect_source(data_dir: Path) -> str:
    """``impressions`` when the folder has an impressions table, else ``feedback``."""

    return "impressions" if find_table_file(data_dir, "impressions") is not None else "feedback"


def load_preference_data(
    data_dir: str | Path,
    cfg: PreferenceConfig,
    towers=None,
    cache_file: str | Path | None = None,
) -> PreferenceData:
    """Read a data folder into `PreferenceData`, embedding each distinct cover once (cached).

    Args:
        data_dir: a platform folder (items, users, impressions) or a folder with items, optional
            users and an implicit feedback table.
        cfg: the config (``source``, ``clip``, ``cover_encoder``, negatives).
        towers: the CLIP (default: ``ClipTowers.from_pretrained(cfg.clip)``).
        cache_file: the embedding cache (``None``: no cache).
    """

    data_dir = Path(data_dir)
    source = detect_source(data_dir) if cfg.source == "auto" else cfg.source
    require = ("items", "users", "impressions") if source == "impressions" else ("items",)
    data = load_dataset(data_dir, require=require)  # the same validation as icg data validate
    items = data.items
    item_ids = items["item_id"].astype(str).tolist()
    user_ids: list[str] = (
        data.users["user_id"].astype(str).tolist() if data.users is not None else []
    )
    if source == "impressions":
        frame = data.impressions
        covers = frame["cover"].astype(str)
        positions = frame["position"].to_numpy(np.int64)
        event_id = frame["event_id"].astype(str).to_numpy()
    else:
        frame = read_implicit_feedback(
            data_dir,
            items=items,
            users=data.users,
            negatives_per_positive=cfg.negatives_per_positive,
            seed=cfg.seed,
        )
        image_of = dict(zip(items["item_id"].astype(str), items["image"].astype(str), strict=True))
        covers = frame["item_id"].astype(str).map(image_of)
        positions = np.zeros(len(frame), dtype=np.int64)
        event_id = None
        if not user_ids:
            user_ids = sorted(frame["user_id"].astype(str).unique())
    cover_codes, cover_paths = pd.factorize(covers)
    if towers is None:
        towers = ClipTowers.from_pretrained(cfg.clip)
    inputs = CoverInputs(
        towers, cfg.cover_encoder, cfg.pixel_size, cfg.patch_layer, *cfg.spectrum_bins
    )  # fmt: skip
    t0 = time.perf_counter()
    embeddings = embed_files(inputs, list(cover_paths), cache_file, cfg.embed_batch_size)  # (C, D)
    logger.info("cover embeddings: %d covers in %.1fs", len(cover_paths), time.perf_counter() - t0)
    user_emb = None
    if data.users is not None and data.embedding_dim > 0:
        user_emb = torch.from_numpy(data.user_embeddings()).float()  # (U, D)
    log = ClickLog(
        user=torch.as_tensor(_codes(frame["user_id"], user_ids)),  # -1: not in the users table
        item=torch.as_tensor(_codes(frame["item_id"], item_ids)),
        cover=torch.as_tensor(cover_codes.astype(np.int64)),
        position=torch.as_tensor(np.array(positions, dtype=np.int64)),
        clicked=torch.as_tensor(np.array(frame["clicked"], dtype=np.float32)),
        timestamp=torch.as_tensor(np.array(frame["timestamp"], dtype=np.int64)),
        event_id=event_id,
    )
    return PreferenceData(
        log, embeddings, user_ids, item_ids, user_emb, [str(p) for p in cover_paths],
        input_layout(inputs),
    )  # fmt: skip


def _codes(values: pd.Series, vocabulary: list[str]) -> np.ndarray:
    """Positions of ``values`` in ``vocabulary`` (``-1`` where absent): ``(N,)`` int64."""
    return pd.Categorical(values.astype(str), categories=vocabulary).codes.astype(np.int64)
