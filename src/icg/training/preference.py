"""Training the personalized preference model from click logs (ICG, EMNLP 2025, Sec. 3.4).

setup (read logs, embed every distinct cover once through a safetensors cache) → train (full-batch
tensors, minibatch AdamW; position debiasing by a jointly fitted PBM or clipped IPS) → save
(``save_pretrained`` + ``metrics.json``).

Two kinds of logs:
- impressions (event_id, user_id, item_id, cover, position, clicked, timestamp): the platform's
  log; positions matter.
- implicit feedback (user_id, item_id, timestamp): positives only; negatives are sampled
  (`icg.data.read_implicit_feedback`), the cover is the item's reference image, and there is no
  position (everything is at position 0, so debiasing is a no-op).

Nothing here reads ``<data>/truth/``; the Bayes-optimal AUC is computed by
`icg.evaluation.preference_eval`, called by the CLI only.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field

from icg.config import DEFAULT_CLIP
from icg.models.preference import PreferenceModel, ips_loss, pbm_log_likelihood

logger = logging.getLogger(__name__)

CACHE_FILE = "cache/cover_embeddings.safetensors"
MAX_POSITIONS = 50


class PreferenceConfig(BaseModel):
    """Hyper-parameters of `icg train preference` (YAML files override any subset)."""

    model_config = ConfigDict(extra="forbid")

    clip: str = DEFAULT_CLIP
    source: Literal["auto", "impressions", "feedback"] = "auto"
    negatives_per_positive: int = Field(4, ge=1)
    debias: Literal["pbm", "ips", "none"] = "pbm"
    propensities: list[float] | None = Field(
        None, description="IPS: known examination per position; None: estimated by a PBM fit"
    )
    ips_clip: float = Field(0.05, gt=0, le=1)
    num_positions: int | None = Field(None, ge=1, description="default: max logged position + 1")
    rank: int = Field(32, ge=1)
    hidden_dim: int = Field(128, ge=1)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(8192, ge=1)
    lr: float = Field(2e-2, gt=0)
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay of the linear maps")
    examination_lr_scale: float = Field(
        5.0, gt=0, description="the examination parameters learn this much faster"
    )
    table_l2: float = Field(1e-4, ge=0, description="L2 on per-user vectors and item biases")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    embed_batch_size: int = Field(256, ge=1)


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
        cover_embeddings: ``(C, E)`` L2-normalised CLIP image embeddings.
        user_ids: ``U`` user ids (``log.user`` indexes them).
        item_ids: ``I`` item ids.
        user_embeddings: ``(U, D)`` platform embeddings (NaN rows: none), or ``None``.
        cover_paths: ``C`` cover files (informational).
    """

    log: ClickLog
    cover_embeddings: torch.Tensor
    user_ids: list[str]
    item_ids: list[str]
    user_embeddings: torch.Tensor | None = None
    cover_paths: list[str] = field(default_factory=list)


@dataclass
class FitResult:
    """A fitted model and what the fit measured."""

    model: PreferenceModel
    history: list[dict]
    metrics: dict
    val: ClickLog | None
    val_scores: np.ndarray | None  # predicted P(click) on ``val``
    data: PreferenceData | None = None  # what it was fitted on (set by `train_preference`)


def time_split(timestamp: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation indices: the last ``val_fraction`` of events by time are validation."""
    order = torch.argsort(timestamp, stable=True)
    n_val = int(round(len(order) * val_fraction))
    return order[: len(order) - n_val], order[len(order) - n_val :]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (NaN when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, scores))


# ---- setup ---------------------------------------------------------------------------------
def detect_source(data_dir: Path) -> str:
    """``impressions`` when the folder has an impressions table, else ``feedback``."""
    from icg.data import find_table_file

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
        cfg: the config (``source``, ``clip``, negatives).
        towers: the CLIP (default: ``ClipTowers.from_pretrained(cfg.clip)``).
        cache_file: the embedding cache (``None``: no cache).
    """
    from icg.data import load_dataset, read_implicit_feedback
    from icg.rewards.clip import ClipTowers, embed_files

    data_dir = Path(data_dir)
    source = detect_source(data_dir) if cfg.source == "auto" else cfg.source
    require = ("items", "users", "impressions") if source == "impressions" else ("items",)
    data = load_dataset(data_dir, require=require, check_images=False)
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
    t0 = time.perf_counter()
    embeddings = embed_files(towers, list(cover_paths), cache_file, cfg.embed_batch_size)  # (C, E)
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
        log, embeddings, user_ids, item_ids, user_emb, [str(p) for p in cover_paths]
    )


def _codes(values: pd.Series, vocabulary: list[str]) -> np.ndarray:
    """Positions of ``values`` in ``vocabulary`` (``-1`` where absent): ``(N,)`` int64."""
    return pd.Categorical(values.astype(str), categories=vocabulary).codes.astype(np.int64)


# ---- train ---------------------------------------------------------------------------------
def build_model(
    data: PreferenceData, train: ClickLog, cfg: PreferenceConfig, clip_name: str | None
) -> PreferenceModel:
    """A fresh model sized for the data; the user table holds users with training history."""
    max_pos = int(data.log.position.max()) + 1 if len(data.log) else 1
    num_positions = cfg.num_positions or min(max_pos, MAX_POSITIONS)
    seen = sorted(set(train.user[train.user >= 0].tolist()))
    user_dim = 0 if data.user_embeddings is None else data.user_embeddings.shape[1]
    model = PreferenceModel(
        image_dim=data.cover_embeddings.shape[1],
        user_dim=user_dim,
        num_users=len(seen),
        num_items=len(data.item_ids),
        num_positions=num_positions,
        rank=cfg.rank,
        hidden_dim=cfg.hidden_dim,
        debias=cfg.debias,
        clip_name_or_path=clip_name,
        user_ids=[data.user_ids[u] for u in seen],
        item_ids=list(data.item_ids),
    )
    if data.user_embeddings is not None:
        emb = data.user_embeddings
        finite = torch.isfinite(emb).all(-1)
        model.set_user_normalisation(emb[finite].mean(0), emb[finite].std(0))
    return model


class _Batcher:
    """Gathers per-event model inputs from the index tensors."""

    def __init__(self, data: PreferenceData, model: PreferenceModel) -> None:
        self.data = data
        # map the data's user rows to the model's user table rows (-1: no history)
        table = model.user_index(data.user_ids)  # (U,)
        self.table_of_user = torch.cat([table, torch.tensor([-1])])  # index -1 → last = -1
        self.emb = None
        if data.user_embeddings is not None:
            nan = torch.full((1, data.user_embeddings.shape[1]), float("nan"))
            self.emb = torch.cat([data.user_embeddings, nan])  # (U + 1, D): row -1 = no user

    def inputs(self, log: ClickLog, idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        u = log.user if idx is None else log.user[idx]
        return {
            "user_embeddings": None if self.emb is None else self.emb[u],
            "user_index": self.table_of_user[u],
            "item_index": log.item if idx is None else log.item[idx],
        }


def _logits(
    model: PreferenceModel, data: PreferenceData, batcher: _Batcher, log: ClickLog,
    idx: torch.Tensor | None = None, cover_feats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:  # fmt: skip
    """Attractiveness logits ``(n,)`` for events ``idx`` of ``log`` (all when ``None``)."""
    covers = log.cover if idx is None else log.cover[idx]
    if cover_feats is None:
        cover_feats = model.image_features(data.cover_embeddings)  # (C, rank), (C,)
    feats = (cover_feats[0][covers], cover_feats[1][covers])
    return model.attractiveness_logit(None, image_features=feats, **batcher.inputs(log, idx))


@torch.no_grad()
def predict(
    model: PreferenceModel, data: PreferenceData, log: ClickLog, batch: int = 65536
) -> np.ndarray:
    """Predicted P(click) ``(N,)`` for the events of ``log`` (examination included unless naive)."""
    model.eval()
    batcher = _Batcher(data, model)
    feats = model.image_features(data.cover_embeddings)
    out = []
    for start in range(0, len(log), batch):
        idx = torch.arange(start, min(start + batch, len(log)))
        a = _logits(model, data, batcher, log, idx, feats)
        log_exam = (
            torch.zeros_like(a)
            if model.config.debias == "none"
            else model.log_examination(log.position[idx])
        )
        out.append((log_exam + F.logsigmoid(a)).exp())
    return torch.cat(out).numpy() if out else np.zeros(0)


def _loss(
    model: PreferenceModel, a: torch.Tensor, position: torch.Tensor, clicked: torch.Tensor,
    ips_clip: float,
) -> torch.Tensor:  # fmt: skip
    mode = model.config.debias
    if mode == "pbm":
        return -pbm_log_likelihood(a, model.log_examination(position), clicked).mean()
    if mode == "ips":
        propensity = model.log_examination(position).exp().detach()
        return ips_loss(a, clicked, propensity, ips_clip).mean()
    return F.binary_cross_entropy_with_logits(a, clicked)


def fit_preference(
    data: PreferenceData,
    cfg: PreferenceConfig,
    clip_name: str | None = None,
    propensities: torch.Tensor | None = None,
) -> FitResult:
    """Fit a `PreferenceModel` on ``data`` (time split: the last ``val_fraction`` validates).

    Args:
        data: tensors from `load_preference_data` (or built in code).
        cfg: hyper-parameters; ``cfg.debias`` picks PBM, IPS or naive.
        clip_name: recorded in the model config.
        propensities: IPS only: examination per position ``(P,)``; default ``cfg.propensities``
            or a PBM fit's estimate.

    Returns:
        The model (eval mode), per-epoch history and final metrics (val AUC, log loss).
    """
    torch.manual_seed(cfg.seed)
    train_idx, val_idx = time_split(data.log.timestamp, cfg.val_fraction)
    train, val = data.log.subset(train_idx), data.log.subset(val_idx)
    model = build_model(data, train, cfg, clip_name)
    if cfg.debias == "ips":
        if propensities is None and cfg.propensities is not None:
            propensities = torch.tensor(cfg.propensities, dtype=torch.float32)
        if propensities is None:
            logger.info("IPS: estimating propensities with a PBM fit first")
            pbm = fit_preference(data, cfg.model_copy(update={"debias": "pbm"}), clip_name)
            with torch.no_grad():
                propensities = pbm.model.log_examination(
                    torch.arange(model.config.num_positions)
                ).exp()
        p = propensities.float().clamp(1e-6, 1.0)[: model.config.num_positions]
        if len(p) < model.config.num_positions:
            p = torch.cat([p, p[-1:].expand(model.config.num_positions - len(p))])
        with torch.no_grad():  # fixed examination: exam(p) = propensity(p) / propensity(0)
            rel = (p / p[0]).clamp(max=1.0 - 1e-6)[1:]
            model.position_theta.copy_(torch.log(torch.expm1(-torch.log(rel))))
        model.position_theta.requires_grad_(False)
    batcher = _Batcher(data, model)
    # weight decay on the linear maps only: never on examination, biases or the tables
    decay = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    exam = [model.position_theta] if model.position_theta.requires_grad else []
    rest = [
        p for p in model.parameters()
        if p.requires_grad and all(p is not d for d in decay + exam)
    ]  # fmt: skip
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
        {"params": rest, "weight_decay": 0.0, "lr": cfg.lr},
        {"params": exam, "weight_decay": 0.0, "lr": cfg.lr * cfg.examination_lr_scale},
    ]
    opt = torch.optim.AdamW(groups)
    steps_per_epoch = max(1, -(-len(train) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=[g["lr"] for g in groups],
        total_steps=cfg.epochs * steps_per_epoch,
        pct_start=0.1,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    n_covers = len(data.cover_embeddings)
    history = []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        total = 0.0
        for start in range(0, len(train), cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            # when the cover table is small, run the cover MLP once per distinct cover
            feats = model.image_features(data.cover_embeddings) if n_covers <= len(idx) else None
            if feats is None:
                covers = train.cover[idx]
                f = model.image_features(data.cover_embeddings[covers])
                inputs = batcher.inputs(train, idx)
                a = model.attractiveness_logit(None, image_features=f, **inputs)
            else:
                inputs = batcher.inputs(train, idx)
                a = _logits(model, data, batcher, train, idx, feats)
            loss = _loss(model, a, train.position[idx], train.clicked[idx], cfg.ips_clip)
            if cfg.table_l2 > 0:
                reg = model.item_offset(inputs["item_index"], len(idx)).pow(2).mean()
                if model.user_table is not None:
                    rows = inputs["user_index"]
                    reg = (
                        reg
                        + model.user_table(rows.clamp(min=0))[rows >= 0]
                        .pow(2)
                        .sum(-1)
                        .mean()
                        .nan_to_num()
                    )
                loss = loss + cfg.table_l2 * reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        row = {
            "epoch": epoch + 1,
            "train_loss": total / max(len(train), 1),
            "seconds": time.perf_counter() - t0,
        }
        if len(val):
            scores = predict(model, data, val)
            row["val_auc"] = auc(scores, val.clicked.numpy())
            row["val_logloss"] = _logloss(scores, val.clicked.numpy())
        history.append(row)
        logger.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items()})
    model.eval()
    scores = predict(model, data, val) if len(val) else None
    metrics = {
        "debias": cfg.debias,
        "train_events": len(train),
        "val_events": len(val),
        "val_auc": history[-1].get("val_auc", float("nan")),
        "val_logloss": history[-1].get("val_logloss", float("nan")),
        "train_seconds": time.perf_counter() - t0,
        "examination": model.log_examination(torch.arange(model.config.num_positions))
        .exp()
        .tolist(),
    }
    return FitResult(model, history, metrics, val if len(val) else None, scores)


def _logloss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


# ---- the recipe ----------------------------------------------------------------------------
def save_preference(result: FitResult, out: str | Path, cfg: PreferenceConfig) -> Path:
    """Write ``save_pretrained`` (config.json + safetensors), ``metrics.json`` and ``train_config.yaml``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(out)
    for name, text in (
        (
            "metrics.json",
            json.dumps({**result.metrics, "history": result.history}, indent=2) + "\n",
        ),
        ("train_config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    return out


def train_preference(
    data_dir: str | Path,
    out: str | Path,
    cfg: PreferenceConfig | None = None,
    towers=None,
) -> FitResult:
    """setup → train → save: fit the preference model on a data folder and save it to ``out``.

    The cover-embedding cache lives in ``<out>/cache/``.
    """
    cfg = cfg or PreferenceConfig()
    out = Path(out)
    data = load_preference_data(data_dir, cfg, towers=towers, cache_file=out / CACHE_FILE)
    clip_name = cfg.clip if towers is None else (towers.name_or_path or cfg.clip)
    result = fit_preference(data, cfg, clip_name=clip_name)
    result.data = data
    save_preference(result, out, cfg)
    return result
