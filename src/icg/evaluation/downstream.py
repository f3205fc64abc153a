"""The downstream recommender of an evaluation: does a method's cover help a CTR model rank?

A bilinear CTR model (`icg.evaluation.recsys`) is fit on the logged impressions with their
original covers' CLIP embeddings; each method's covers are then swapped in and the model ranks
them against the simulator's true expected CTR (`rec_auc`, `rec_ndcg10`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from icg.evaluation.baselines import load_covers
from icg.evaluation.recsys import RecModel, ndcg_at_k, soft_auc, train_rec_model


def embed_images(clip, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """CLIP image embeddings (N, D) of uint8 images (N, H, W, 3)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    with torch.no_grad():
        return torch.cat(
            [clip.image_embeds(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        ).numpy()


def train_downstream(
    data, clip, size: int, train_fraction: float = 0.8, seed: int = 0
) -> tuple[RecModel, float]:
    """Fit the downstream CTR model on the first `train_fraction` of logged impressions (by
    time); return it and its AUC on the held-out logged impressions with original covers."""
    imp = data.impressions.sort_values("timestamp", kind="mergesort").reset_index(drop=True)
    split = int(len(imp) * train_fraction)
    covers = list(dict.fromkeys(imp["cover"]))
    emb = embed_images(clip, load_covers(covers, size))
    row = {c: k for k, c in enumerate(covers)}
    users = data.users.set_index("user_id")["embedding"]
    u = np.stack(users.loc[imp["user_id"]].to_numpy()).astype(np.float32)
    v = emb[[row[c] for c in imp["cover"]]]
    y = imp["clicked"].to_numpy()
    model = train_rec_model(
        u[:split],
        v[:split],
        imp["item_id"][:split],
        imp["position"].to_numpy()[:split],
        y[:split],
        seed=seed,
    )
    held = model.score(u[split:], v[split:], imp["item_id"][split:])
    return model, soft_auc(held, y[split:].astype(float))


def downstream_note(logged_auc: float, train_fraction: float = 0.8) -> str:
    """The report paragraph that says what the downstream columns measure."""
    return (
        f"Downstream model: bilinear CTR model on (platform user embedding, CLIP cover embedding, "
        f"item, position) trained on the first {train_fraction:.0%} of logged impressions by "
        f"time; AUC on the held-out {1 - train_fraction:.0%} with the logged covers: "
        f"{logged_auc:.4f}. rec_auc / rec_ndcg10 rank each method's covers for the evaluation "
        f"pairs; their click labels are the simulator's true expected CTR of that cover for that "
        f"user (soft-label AUC = expected AUC over Bernoulli clicks)."
    )


def downstream_metrics(
    rec: RecModel, data, pairs: pd.DataFrame, emb: np.ndarray, true_ctr: np.ndarray
) -> dict[str, float]:
    """``rec_auc`` and ``rec_ndcg10`` of the model's scores for covers ``emb`` (N, D) of
    ``pairs``, against their true expected CTR (N,)."""
    users = data.users.set_index("user_id")["embedding"]
    u = np.stack(users.loc[pairs["user_id"]].to_numpy()).astype(np.float32)
    s = rec.score(u, emb, pairs["item_id"])
    return {
        "rec_auc": soft_auc(s, true_ctr),
        "rec_ndcg10": ndcg_at_k(s, true_ctr, pairs["user_id"].to_numpy()),
    }
