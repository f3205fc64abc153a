"""Downstream recommendation: a CTR model that uses cover image features, and ranking metrics.

The model is a position-aware bilinear logistic model,

    logit = u^T W v + w_u^T u + w_v^T v + b_item + b_position,

with u the platform user embedding and v the cover's image embedding (e.g. CLIP). It is trained
on the training logs' impressions; at evaluation, covers are swapped for each method's covers and
the model ranks items for each user with the position term removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from icg.seeding import seed_everything


def soft_auc(scores: np.ndarray, p: np.ndarray) -> float:
    """AUC against soft labels: P(score_i > score_j) weighted by p_i (1 - p_j).

    Equals the expected AUC over Bernoulli(p) clicks (ties count one half); with 0/1 labels it
    is the ordinary ROC AUC. O(N log N) via ranks.
    """
    scores, p = np.asarray(scores, dtype=np.float64), np.asarray(p, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    s, w_pos, w_neg = scores[order], p[order], 1.0 - p[order]
    # group ties
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    pos_g = np.add.reduceat(w_pos, start)
    neg_g = np.add.reduceat(w_neg, start)
    neg_below = np.cumsum(neg_g) - neg_g
    num = (pos_g * (neg_below + 0.5 * neg_g)).sum()
    den = w_pos.sum() * w_neg.sum() - (w_pos * w_neg).sum()  # exclude i == j pairs
    num -= 0.5 * (w_pos * w_neg).sum()
    return float(num / den) if den > 0 else float("nan")


def ndcg_at_k(scores: np.ndarray, gains: np.ndarray, groups: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over groups (users): rank by score, graded gains (e.g. true CTR)."""
    out = []
    for g in np.unique(groups):
        m = groups == g
        s, gain = scores[m], gains[m]
        top = np.argsort(-s, kind="mergesort")[:k]
        ideal = np.sort(gain)[::-1][:k]
        disc = 1.0 / np.log2(np.arange(2, len(top) + 2))
        idcg = (ideal * disc[: len(ideal)]).sum()
        if idcg > 0:
            out.append((gain[top] * disc).sum() / idcg)
    return float(np.mean(out)) if out else float("nan")


class BilinearCTR(nn.Module):
    """logit = u^T W v + w_u^T u + w_v^T v + b_item + b_position (position dropped at serving)."""

    def __init__(
        self, user_dim: int, image_dim: int, n_items: int, n_positions: int, rank: int = 16
    ):
        super().__init__()
        self.user_proj = nn.Linear(user_dim, rank, bias=False)
        self.image_proj = nn.Linear(image_dim, rank, bias=False)
        self.user_lin = nn.Linear(user_dim, 1)
        self.image_lin = nn.Linear(image_dim, 1, bias=False)
        self.item_bias = nn.Embedding(n_items + 1, 1)  # last row: unknown item
        self.pos_bias = nn.Embedding(n_positions, 1)
        for emb in (self.item_bias, self.pos_bias):
            nn.init.zeros_(emb.weight)

    def forward(self, u, v, item, position=None) -> torch.Tensor:
        logit = (self.user_proj(u) * self.image_proj(v)).sum(-1)  # (N,)
        logit = (
            logit + self.user_lin(u)[:, 0] + self.image_lin(v)[:, 0] + self.item_bias(item)[:, 0]
        )
        if position is not None:
            logit = logit + self.pos_bias(position)[:, 0]
        return logit


@dataclass
class RecModel:
    """A trained downstream model with its item index."""

    net: BilinearCTR
    item_index: dict[str, int]
    user_mean: np.ndarray
    user_std: np.ndarray
    image_mean: np.ndarray
    image_std: np.ndarray

    def score(self, user_emb: np.ndarray, image_emb: np.ndarray, item_ids) -> np.ndarray:
        """Serving scores (no position term) for rows of (user, cover, item)."""
        unk = len(self.item_index)
        item = torch.tensor([self.item_index.get(i, unk) for i in item_ids])
        u = torch.as_tensor((user_emb - self.user_mean) / self.user_std, dtype=torch.float32)
        v = torch.as_tensor((image_emb - self.image_mean) / self.image_std, dtype=torch.float32)
        with torch.no_grad():
            return self.net(u, v, item).numpy()


def train_rec_model(
    user_emb: np.ndarray,
    image_emb: np.ndarray,
    item_ids,
    positions: np.ndarray,
    clicked: np.ndarray,
    *,
    epochs: int = 8,
    batch_size: int = 2048,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> RecModel:
    """Fit the bilinear CTR model on logged impressions (rows aligned across arguments)."""
    seed_everything(seed)
    items = sorted(set(item_ids))
    index = {it: k for k, it in enumerate(items)}
    um, us = user_emb.mean(0), user_emb.std(0) + 1e-6
    im, is_ = image_emb.mean(0), image_emb.std(0) + 1e-6
    u = torch.as_tensor((user_emb - um) / us, dtype=torch.float32)
    v = torch.as_tensor((image_emb - im) / is_, dtype=torch.float32)
    item = torch.tensor([index[i] for i in item_ids])
    pos = torch.as_tensor(np.minimum(positions, 63), dtype=torch.long)
    y = torch.tensor(np.asarray(clicked), dtype=torch.float32)
    net = BilinearCTR(u.shape[1], v.shape[1], len(items), int(pos.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            b = perm[start : start + batch_size]
            loss = nn.functional.binary_cross_entropy_with_logits(
                net(u[b], v[b], item[b], pos[b]), y[b]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return RecModel(net, index, um, us, im, is_)
