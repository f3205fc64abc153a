"""`icg evaluate`: score every method's covers on the same (user, item) pairs.

Model-side metrics (CLIP embeddings, diversity, downstream recommendation on logged clicks) work
on any data; truth metrics appear only when the data folder has CoverWorld's `truth/`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icg.evaluation.metrics import diversity, lift_fraction, truth_metrics
from icg.evaluation.recsys import RecModel, ndcg_at_k, soft_auc, train_rec_model
from icg.evaluation.report import write_report

logger = logging.getLogger(__name__)

# A method draws covers for pairs: (pairs frame) -> uint8 (N, H, W, 3), rows aligned with pairs.
CoverSource = Callable[[pd.DataFrame], np.ndarray]


def choose_pairs(data, n_users: int, n_items: int, seed: int = 0, n_cold: int = 1) -> pd.DataFrame:
    """Evaluation pairs from observable data only: users spread over embedding clusters (taste
    segments show up there) plus `n_cold` users with no history, crossed with random items."""
    from icg.generation import segment_users

    rng = np.random.default_rng(seed)
    users = data.users.reset_index(drop=True)
    seen = set(data.impressions["user_id"]) if data.impressions is not None else set()
    cold = users[~users["user_id"].isin(seen)]
    warm = users[users["user_id"].isin(seen)]
    n_cold = min(n_cold, len(cold), n_users)
    n_warm = min(n_users - n_cold, len(warm))
    labels, _ = segment_users(np.stack(warm["embedding"].to_numpy()), max(n_warm, 1), seed)
    picked = [warm["user_id"].iloc[np.flatnonzero(labels == s)[0]] for s in np.unique(labels)][
        :n_warm
    ]
    picked += list(cold["user_id"].iloc[rng.permutation(len(cold))[:n_cold]])
    items = list(data.items["item_id"].iloc[rng.permutation(len(data.items))[:n_items]])
    return pd.DataFrame([(u, i) for u in picked for i in items], columns=["user_id", "item_id"])


def load_covers(paths, size: int) -> np.ndarray:
    """Images at `paths` as uint8 (N, size, size, 3) through the safe loader."""
    from icg.data.images import load_image

    return np.stack([np.asarray(load_image(p, size=size)) for p in paths])


def _embed(clip, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
    with torch.no_grad():
        return torch.cat(
            [clip.image_embeds(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        ).numpy()


def train_downstream(data, clip, size: int, train_fraction: float = 0.8, seed: int = 0):
    """Fit the downstream CTR model on the first `train_fraction` of logged impressions (by
    time); return it and its AUC on the held-out logged impressions with original covers."""
    imp = data.impressions.sort_values("timestamp", kind="mergesort").reset_index(drop=True)
    split = int(len(imp) * train_fraction)
    covers = list(dict.fromkeys(imp["cover"]))
    emb = _embed(clip, load_covers(covers, size))
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


def evaluate_methods(
    data,
    pairs: pd.DataFrame,
    sources: dict[str, CoverSource],
    out: Path | str,
    *,
    clip=None,
    truth=None,
    image_size: int = 64,
    configs: dict | None = None,
    curves: dict | None = None,
    seed: int = 0,
) -> dict:
    """Draw every method's covers for `pairs`, score them, write metrics.json and report.html.

    Args:
        data: `PlatformData`.
        pairs: user_id, item_id rows.
        sources: method name -> cover source.
        clip: a `ClipTowers` (model-side metrics and the downstream model), or None.
        truth: a `icg.world.truth.Truth`, or None (no truth metrics).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    users = data.users.set_index("user_id")["embedding"]
    seen = set(data.impressions["user_id"]) if data.impressions is not None else set()
    cold = ~pairs["user_id"].isin(seen).to_numpy()
    rec: RecModel | None = None
    results: dict[str, dict] = {}
    covers: dict[str, np.ndarray] = {}
    notes = []
    if clip is not None and data.impressions is not None:
        rec, logged_auc = train_downstream(data, clip, image_size, seed=seed)
        notes.append(
            f"Downstream model: bilinear CTR model on (platform user embedding, CLIP cover embedding, "
            f"item, position) trained on the first 80% of logged impressions by time; AUC on the "
            f"held-out 20% with the logged covers: {logged_auc:.4f}. rec_auc / rec_ndcg10 rank each "
            f"method's covers for the evaluation pairs; their click labels are the simulator's true "
            f"expected CTR of that cover for that user (soft-label AUC = expected AUC over Bernoulli clicks)."
        )
    for name, source in sources.items():
        start = time.perf_counter()
        images = source(pairs)
        seconds = time.perf_counter() - start
        if images.shape[0] != len(pairs):
            raise ValueError(f"method {name}: {images.shape[0]} covers for {len(pairs)} pairs")
        covers[name] = images
        m: dict[str, float] = {"n_pairs": len(pairs), "seconds": round(seconds, 2)}
        scores = None
        if truth is not None:
            scores = truth.score(images, pairs["user_id"], pairs["item_id"])
            m |= truth_metrics(scores, cold)
        if clip is not None:
            emb = _embed(clip, images)
            m["diversity"] = diversity(emb, pairs["item_id"].to_numpy())
            if clip.tokenizer is not None:
                titles = data.items.set_index("item_id").loc[pairs["item_id"], "title"].tolist()
                text = clip.text_embeds(titles).numpy()
                m["clipscore"] = float(np.mean(100.0 * np.maximum((emb * text).sum(1), 0.0)))
            if rec is not None and scores is not None:
                u = np.stack(users.loc[pairs["user_id"]].to_numpy()).astype(np.float32)
                s = rec.score(u, emb, pairs["item_id"])
                m["rec_auc"] = soft_auc(s, scores["ctr"])
                m["rec_ndcg10"] = ndcg_at_k(s, scores["ctr"], pairs["user_id"].to_numpy())
        results[name] = m
        logger.info(
            "%s: %s", name, {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
        )
    if truth is not None and "reference" in results and "oracle" in results:
        ref, orc = results["reference"]["true_ctr"], results["oracle"]["true_ctr"]
        for m in results.values():
            m["lift_fraction"] = lift_fraction(m["true_ctr"], ref, orc)
    metrics = {"world": (configs or {}).get("world", {}), "methods": results}
    _write_json(metrics, out / "metrics.json")
    write_report(
        out / "report.html",
        metrics=metrics,
        grid=_grid(pairs, covers, cold, data),
        curves=curves or {},
        configs=configs or {},
        notes=notes,
    )
    return metrics


def _grid(pairs, covers, cold, data, n_rows: int = 12) -> list[dict]:
    titles = data.items.set_index("item_id")["title"]
    rows = []
    for k in range(min(n_rows, len(pairs))):
        # spread rows over users: take pairs in user-major order with a stride
        idx = (k * max(1, len(pairs) // n_rows)) % len(pairs)
        u, i = pairs["user_id"].iloc[idx], pairs["item_id"].iloc[idx]
        label = f"{u}{' (cold start)' if cold[idx] else ''} / {i}"
        rows.append(
            {"label": label, "title": titles[i], "covers": {m: c[idx] for m, c in covers.items()}}
        )
    return rows


def _write_json(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)
