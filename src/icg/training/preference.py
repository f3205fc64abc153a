"""Training the personalized preference model from click logs (ICG, EMNLP 2025, Sec. 3.4).

setup (read logs, embed every distinct cover once through a safetensors cache:
`icg.training.click_log`) → train (full-batch tensors, minibatch AdamW; position debiasing by a
jointly fitted PBM or clipped IPS) → save (``save_pretrained`` + ``metrics.json``).

Nothing here reads ``<data>/truth/``; the Bayes-optimal AUC is computed by
`icg.evaluation.preference_eval`, called by the CLI only.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icg.io import atomic_write_json, atomic_write_yaml
from icg.layout import (
    METRICS_FILE,
    PREFERENCE_CACHE_FILE,
    PREFERENCE_CONFIG_FILE,
    TRAIN_CONFIG_FILE,
)
from icg.models.preference import PreferenceModel, ips_loss, pbm_log_likelihood
from icg.runs import start_run
from icg.seeding import seed_everything
from icg.training.click_log import ClickLog, PreferenceData, load_preference_data, time_split
from icg.training.log_split import keep_log_half
from icg.training.preference_config import PreferenceConfig as PreferenceConfig  # re-exported

logger = logging.getLogger(__name__)

CACHE_FILE = PREFERENCE_CACHE_FILE
MAX_POSITIONS = 50


@dataclass
class FitResult:
    """A fitted model and what the fit measured."""

    model: PreferenceModel
    history: list[dict]
    metrics: dict
    val: ClickLog | None
    data: PreferenceData | None = None  # what it was fitted on (set by `train_preference`)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (NaN when only one class is present)."""
    # import cost: scikit-learn takes seconds to import; only this metric needs it
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, scores))


# ---- train ---------------------------------------------------------------------------------
def build_model(
    data: PreferenceData, train: ClickLog, cfg: PreferenceConfig, clip_name: str | None
) -> PreferenceModel:
    """A fresh model sized for the data (users with history, cover encoder of the inputs)."""
    max_pos = int(data.log.position.max()) + 1 if len(data.log) else 1
    num_positions = cfg.num_positions or min(max_pos, MAX_POSITIONS)
    seen = sorted(set(train.user[train.user >= 0].tolist()))
    user_dim = 0 if data.user_embeddings is None else data.user_embeddings.shape[1]
    layout = data.input_layout or {"image_dim": data.cover_embeddings.shape[1]}  # none: "clip"
    model = PreferenceModel(
        **layout,
        encoder_width=cfg.encoder_width,
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
    model.set_extra_normalisation(data.cover_embeddings)
    if data.user_embeddings is not None:
        emb = data.user_embeddings
        finite = torch.isfinite(emb).all(-1)
        model.set_user_normalisation(emb[finite].mean(0), emb[finite].std(0))
    return model


class _Batcher:
    """Gathers per-event model inputs from the index tensors."""

    def __init__(self, data: PreferenceData, model: PreferenceModel) -> None:
        # map the data's user rows to the model's user table rows (-1: no history)
        table = model.user_index(data.user_ids)  # (U,)
        self.table_of_user = torch.cat([table, torch.tensor([-1])])  # index -1 → last = -1
        self.emb = None
        if data.user_embeddings is not None:
            nan = torch.full((1, data.user_embeddings.shape[1]), float("nan"))
            self.emb = torch.cat([data.user_embeddings, nan])  # (U + 1, D): row -1 = no user

    def inputs(self, log: ClickLog, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """User embeddings ``(n, D)`` (or ``None``), user-table rows and item rows ``(n,)`` of the
        events ``idx`` of ``log``."""
        u = log.user[idx]
        return {
            "user_embeddings": None if self.emb is None else self.emb[u],
            "user_index": self.table_of_user[u],
            "item_index": log.item[idx],
        }


def _logits(
    model: PreferenceModel, batcher: _Batcher, log: ClickLog, idx: torch.Tensor,
    cover_feats: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:  # fmt: skip
    """Attractiveness logits ``(n,)`` of events ``idx`` of ``log``, from the image features
    ``(C, rank), (C,)`` of the whole cover table."""
    covers = log.cover[idx]
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
        a = _logits(model, batcher, log, idx, feats)
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


def _batch_logits(
    model: PreferenceModel, data: PreferenceData, batcher: _Batcher, log: ClickLog,
    idx: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """Attractiveness logits ``(n,)`` of a training batch: a cover table no larger than the batch
    goes through the cover MLP once per distinct cover, a larger one once per event."""
    if len(data.cover_embeddings) <= len(idx):
        return _logits(model, batcher, log, idx, model.image_features(data.cover_embeddings))
    feats = model.image_features(data.cover_embeddings[log.cover[idx]])  # (n, rank), (n,)
    return model.attractiveness_logit(None, image_features=feats, **batcher.inputs(log, idx))


def _table_penalty(model: PreferenceModel, inputs: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """L2 on a batch's item biases and per-user vectors (users without history have none)."""
    reg = model.item_offset(inputs["item_index"], n).pow(2).mean()
    if model.user_table is not None:
        rows = inputs["user_index"]
        user = model.user_table(rows.clamp(min=0))[rows >= 0]  # (n_known, rank)
        reg = reg + user.pow(2).sum(-1).mean().nan_to_num()
    return reg


def ips_propensities(
    data: PreferenceData, cfg: PreferenceConfig, clip_name: str | None, num_positions: int,
    propensities: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Examination per position ``(num_positions,)`` for IPS: ``propensities``, else
    ``cfg.propensities``, else estimated by a PBM fit on the same data; clamped to [1e-6, 1] and
    padded with the last value."""
    if propensities is None and cfg.propensities is not None:
        propensities = torch.tensor(cfg.propensities, dtype=torch.float32)
    if propensities is None:
        logger.info("IPS: estimating propensities with a PBM fit first")
        pbm = fit_preference(data, cfg.model_copy(update={"debias": "pbm"}), clip_name)
        with torch.no_grad():
            propensities = pbm.model.log_examination(torch.arange(num_positions)).exp()
    p = propensities.float().clamp(1e-6, 1.0)[:num_positions]
    if len(p) < num_positions:
        p = torch.cat([p, p[-1:].expand(num_positions - len(p))])
    return p


def fix_examination(model: PreferenceModel, propensities: torch.Tensor) -> None:
    """Set and freeze the examination: ``exam(p) = propensity(p) / propensity(0)`` (IPS weights
    are relative to the top position)."""
    with torch.no_grad():
        rel = (propensities / propensities[0]).clamp(max=1.0 - 1e-6)[1:]
        model.position_theta.copy_(torch.log(torch.expm1(-torch.log(rel))))
    model.position_theta.requires_grad_(False)


def parameter_groups(model: PreferenceModel, cfg: PreferenceConfig) -> list[dict]:
    """AdamW groups: weight decay on the linear maps only, never on examination, biases or the
    tables; the examination learns ``examination_lr_scale`` times faster."""
    decay = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    exam = [model.position_theta] if model.position_theta.requires_grad else []
    rest = [
        p for p in model.parameters()
        if p.requires_grad and all(p is not d for d in decay + exam)
    ]  # fmt: skip
    lr = cfg.learning_rate
    return [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr": lr},
        {"params": rest, "weight_decay": 0.0, "lr": lr},
        {"params": exam, "weight_decay": 0.0, "lr": lr * cfg.examination_lr_scale},
    ]


def _train_epoch(
    model: PreferenceModel, data: PreferenceData, batcher: _Batcher, train: ClickLog,
    opt: torch.optim.Optimizer, sched, cfg: PreferenceConfig, gen: torch.Generator,
) -> float:  # fmt: skip
    """One pass over ``train`` in a seeded random order; returns the mean training loss."""
    model.train()
    perm = torch.randperm(len(train), generator=gen)
    total = 0.0
    for start in range(0, len(train), cfg.batch_size):
        idx = perm[start : start + cfg.batch_size]
        a = _batch_logits(model, data, batcher, train, idx)
        loss = _loss(model, a, train.position[idx], train.clicked[idx], cfg.ips_clip)
        if cfg.table_l2 > 0:
            loss = loss + cfg.table_l2 * _table_penalty(model, batcher.inputs(train, idx), len(idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
    return total / max(len(train), 1)


def _validation_metrics(model: PreferenceModel, data: PreferenceData, val: ClickLog) -> dict:
    scores, clicked = predict(model, data, val), val.clicked.numpy()
    return {"val_auc": auc(scores, clicked), "val_logloss": _logloss(scores, clicked)}


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
    seed_everything(cfg.seed)
    data = keep_log_half(data, cfg.log_half)
    train_idx, val_idx = time_split(data.log.timestamp, cfg.val_fraction)
    train, val = data.log.subset(train_idx), data.log.subset(val_idx)
    model = build_model(data, train, cfg, clip_name)
    num_positions = model.config.num_positions
    if cfg.debias == "ips":
        fix_examination(model, ips_propensities(data, cfg, clip_name, num_positions, propensities))
    groups = parameter_groups(model, cfg)
    opt = torch.optim.AdamW(groups)
    steps_per_epoch = max(1, -(-len(train) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=[g["lr"] for g in groups],
        total_steps=cfg.epochs * steps_per_epoch,
        pct_start=0.1,
    )
    batcher = _Batcher(data, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        row = {
            "epoch": epoch + 1,
            "train_loss": _train_epoch(model, data, batcher, train, opt, sched, cfg, gen),
            "seconds": time.perf_counter() - t0,
        }
        if len(val):
            row.update(_validation_metrics(model, data, val))
        history.append(row)
        logger.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in row.items()})
    model.eval()
    metrics = {
        "debias": cfg.debias,
        "train_events": len(train),
        "val_events": len(val),
        "val_auc": history[-1].get("val_auc", float("nan")),
        "val_logloss": history[-1].get("val_logloss", float("nan")),
        "train_seconds": time.perf_counter() - t0,
        "examination": model.log_examination(torch.arange(num_positions)).exp().tolist(),
    }
    return FitResult(model, history, metrics, val if len(val) else None)


def _logloss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


# ---- the recipe ----------------------------------------------------------------------------
def save_preference(result: FitResult, out: str | Path, cfg: PreferenceConfig) -> Path:
    """Write ``metrics.json``, ``train_config.yaml`` and ``save_pretrained`` (safetensors, then
    ``config.json``). Each file is renamed into place whole, and ``config.json``, which marks a
    finished model (the demo skips the stage when it exists), comes last: an interrupted save
    never leaves a config beside missing or truncated weights."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / METRICS_FILE, {**result.metrics, "history": result.history})
    atomic_write_yaml(out / TRAIN_CONFIG_FILE, cfg.model_dump())
    with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-model-") as tmp:
        result.model.save_pretrained(tmp)
        for file in sorted(Path(tmp).iterdir(), key=lambda f: f.name == PREFERENCE_CONFIG_FILE):
            os.replace(file, out / file.name)
    return out


def train_preference(
    data_dir: str | Path,
    out: str | Path,
    cfg: PreferenceConfig | None = None,
    towers=None,
    overwrite: bool = False,
) -> FitResult:
    """setup → train → save: fit the preference model on a data folder and save it to ``out``.

    The cover-embedding cache lives in ``<out>/cache/``. A folder holding another run is
    refused unless ``overwrite`` (`icg.runs.start_run`).
    """
    cfg = cfg or PreferenceConfig()
    out = Path(out)
    start_run(out, cfg, kind="preference", overwrite=overwrite, data=data_dir,
              inputs={"data": data_dir})  # fmt: skip
    data = load_preference_data(data_dir, cfg, towers=towers, cache_file=out / CACHE_FILE)
    clip_name = cfg.clip if towers is None else (towers.name_or_path or cfg.clip)
    result = fit_preference(data, cfg, clip_name=clip_name)
    result.data = data
    save_preference(result, out, cfg)
    return result
