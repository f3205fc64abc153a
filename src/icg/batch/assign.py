"""The assignment table: which of the drawn covers each user sees for each item.

Without a preference model every user gets their segment's cover (the candidate the segment's
reward kept). With one, each user's preference model picks among the item's covers of the
user's choice segments (every candidate of each), by the attractiveness logit of ICG's
preference reward (EMNLP 2025, Sec. 3.4; examination and the item bias left out, as they are
the same for every cover of an item). Each cover is embedded once; a (user, cover) score is
then a small product in the preference model's taste space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from icg.batch.plan import cover_path
from icg.batch.worker import to_tensor
from icg.io import atomic_path
from icg.rewards import PreferenceReward

ASSIGNMENT_COLUMNS = [
    "user_id",
    "item_id",
    "segment",  # the user's segment
    "cover_segment",  # the segment whose cover the user gets
    "candidate",
    "path",  # relative to OUT
    "score",  # the preference logit of the pick (NaN: the segment's cover, no pick)
]


def segment_covers(pairs: pd.DataFrame, user_segment: pd.Series, manifest: pd.DataFrame):
    """Every pair's own segment's cover (the segment's kept candidate)."""
    frame = pairs.assign(segment=user_segment.loc[pairs["user_id"]].to_numpy())
    kept = manifest[["segment", "item_id", "candidate", "path"]]
    frame = frame.merge(kept, on=["segment", "item_id"], how="left", validate="many_to_one")
    missing = frame["path"].isna()
    if missing.any():
        first = frame.loc[missing].iloc[0]
        raise KeyError(
            f"no cover for segment {first.segment}, item {first.item_id!r} in the manifest"
        )
    frame["cover_segment"] = frame["segment"]
    frame["score"] = np.nan
    return frame[ASSIGNMENT_COLUMNS]


class PreferencePicker:
    """Scores covers for users with a trained preference model (see module doc).

    Args:
        preference: the preference model folder (``RUN/preference``).
        out: the batch output folder (covers are read from it).
    """

    def __init__(self, preference: str | Path, out: Path) -> None:

        self.reward = PreferenceReward(str(preference)).eval()
        self.out = Path(out)

    @torch.no_grad()
    def cover_features(self, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Taste vectors ``(N, rank)`` and appeal ``(N,)`` of covers (paths relative to OUT)."""
        tastes, appeals = [], []
        for start in range(0, len(paths), 128):
            images = []
            for p in paths[start : start + 128]:
                with Image.open(self.out / p) as im:
                    images.append(im.convert("RGB"))
            emb = self.reward.clip.image_embeds(to_tensor(images))  # (B, E)
            taste, appeal = self.reward.model.image_features(emb)  # (B, rank), (B,)
            tastes.append(taste)
            appeals.append(appeal)
        return torch.cat(tastes), torch.cat(appeals)

    @torch.no_grad()
    def logits(
        self, user_ids: list[str], embeddings: np.ndarray, features: tuple[torch.Tensor, ...]
    ) -> np.ndarray:
        """Attractiveness logits (U, C) of C covers for U users (embeddings (U, E))."""
        taste, appeal = features
        u, c = len(user_ids), len(appeal)
        users = torch.from_numpy(np.repeat(embeddings, c, axis=0))  # (U*C, E)
        index = self.reward.model.user_index(list(np.repeat(user_ids, c)))  # (U*C,)
        flat = (taste.repeat(u, 1), appeal.repeat(u))  # (U*C, rank), (U*C,)
        logit = self.reward.model.attractiveness_logit(
            None, users, index, image_features=flat
        )  # (U*C,)
        return logit.reshape(u, c).float().numpy()


def preference_picks(
    pairs: pd.DataFrame,
    users: pd.DataFrame,
    choices: dict[str, np.ndarray],
    manifest: pd.DataFrame,
    candidates: int,
    picker: PreferencePicker,
) -> pd.DataFrame:
    """Per (user, item) pair, the cover the user's preference rates best among every candidate
    of the item's covers from the segments in ``choices[user]``.

    Args:
        pairs: user_id, item_id.
        users: user_id, embedding, segment (the user's own).
        choices: user_id → segment indices the user may take covers from.
        manifest: the batch manifest (segment, item_id per unit).
        candidates: draws per unit (all of them are options).
        picker: scores covers for users.
    """
    info = users.set_index("user_id")
    rows = []
    for item_id, group in pairs.groupby("item_id", sort=True):
        segs = np.sort(manifest.loc[manifest["item_id"] == item_id, "segment"].to_numpy())
        options = [(int(s), k) for s in segs for k in range(candidates)]
        features = picker.cover_features([cover_path(s, item_id, k) for s, k in options])
        ids = group["user_id"].tolist()
        emb = np.stack(info.loc[ids, "embedding"].to_numpy()).astype(np.float32)  # (U, E)
        logit = picker.logits(ids, emb, features)  # (U, C)
        option_seg = np.array([s for s, _ in options])
        allowed = np.stack([np.isin(option_seg, choices[u]) for u in ids])  # (U, C)
        if not allowed.any(1).all():
            raise KeyError(f"item {item_id!r}: a user has none of their segments' covers")
        best = np.where(allowed, logit, -np.inf).argmax(1)
        for n, (u, b) in enumerate(zip(ids, best, strict=True)):
            s, k = options[b]
            rows.append(
                (u, item_id, int(info.at[u, "segment"]), s, k, cover_path(s, item_id, k),
                 float(logit[n, b]))
            )  # fmt: skip
    frame = pd.DataFrame(rows, columns=ASSIGNMENT_COLUMNS)
    order = pairs[["user_id", "item_id"]].reset_index(drop=True)
    return order.merge(frame, on=["user_id", "item_id"], how="left")[ASSIGNMENT_COLUMNS]


def write_assignments(frame: pd.DataFrame, path: Path) -> Path:
    """Write the assignment table atomically."""
    frame = frame.astype({"segment": "int64", "cover_segment": "int64", "candidate": "int64"})
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path
