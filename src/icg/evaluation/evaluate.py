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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from icg.config import DEFAULT_AESTHETIC, DEFAULT_CLIP
from icg.evaluation.baselines import CoverSource, load_covers
from icg.evaluation.metrics import diversity, lift_fraction, truth_metrics
from icg.evaluation.recsys import RecModel, ndcg_at_k, soft_auc, train_rec_model
from icg.evaluation.report import write_report
from icg.generation import Scorer
from icg.training.curves import read_curves as read_curves_file

logger = logging.getLogger(__name__)

__all__ = ["CoverSource", "choose_pairs", "evaluate_methods", "load_covers", "train_downstream"]


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
    scorers: dict[str, Scorer] | None = None,
    image_size: int = 64,
    configs: dict | None = None,
    curves: dict | None = None,
    seed: int = 0,
    notes: Sequence[str] = (),
) -> dict:
    """Draw every method's covers for `pairs`, score them, write metrics.json and report.html.

    Args:
        data: `PlatformData`.
        pairs: user_id, item_id rows.
        sources: method name -> cover source.
        clip: a `ClipTowers` (model-side metrics and the downstream model), or None.
        truth: a `icg.world.truth.Truth`, or None (no truth metrics).
        scorers: metric name -> model-side scorer (e.g. ``aesthetic_reward``,
            ``preference_score``); each method's value is the mean over its covers.
        notes: paragraphs for the report (how the methods were drawn).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    users = data.users.set_index("user_id")["embedding"]
    seen = set(data.impressions["user_id"]) if data.impressions is not None else set()
    cold = ~pairs["user_id"].isin(seen).to_numpy()
    rec: RecModel | None = None
    results: dict[str, dict] = {}
    covers: dict[str, np.ndarray] = {}
    notes = list(notes)
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
        for metric, scorer in (scorers or {}).items():
            m[metric] = float(
                np.mean(scorer(pairs["user_id"].tolist(), pairs["item_id"].tolist(), images))
            )
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


# ---- `icg evaluate`: every method of a run folder ------------------------------------------
METHODS = (
    "reference",
    "prompt",
    "mllm-prompt",
    "icg-nouser",
    "icg-aesthetic",
    "icg-relevance",
    "icg-preference",
    "icg-single",
    "icg",
    "oracle",
)
# method -> (run subfolder with the adapter, personalized, best-of-K under the run's reward)
ICG_METHODS = {
    "icg": ("icg", True, True),
    "icg-single": ("icg", True, False),
    "icg-nouser": ("icg", False, True),
    "icg-aesthetic": ("icg-aesthetic", True, True),
    "icg-relevance": ("icg-relevance", True, True),
    "icg-preference": ("icg-preference", True, True),
}


def adapter_folder(run: Path, name: str) -> Path | None:
    """``RUN/<name>/adapter`` (or ``RUN/<name>``) when it holds an ICG adapter."""
    for folder in (run / name / "adapter", run / name):
        if (folder / "icg_config.json").is_file():
            return folder
    return None


def read_curves(run: Path) -> dict[str, list[dict]]:
    """Stage-B curves of every run under ``run``: rewards per step and the truth probe (flat)."""
    curves = {}
    for file in sorted(run.glob("*/curves.jsonl")):
        rows = []
        for row in read_curves_file(file):
            flat = {"step": row["step"]}
            flat |= {k: v for k, v in row.get("probe", {}).items()}
            flat |= {
                k: v
                for k, v in row.items()
                if k.startswith("reward/") and not k.endswith(("_normalised", "_cosine"))
            }
            rows.append(flat)
        curves[file.parent.name] = rows
    return curves


def evaluate_run(
    data_dir: Path | str,
    run: Path | str,
    out: Path | str,
    *,
    methods: list[str] | None = None,
    n_users: int = 8,
    n_items: int = 16,
    num_inference_steps: int = 10,
    guidance_scale: float = 1.0,
    strength: float = 1.0,
    candidates: int = 1,
    prompt_guidance_scale: float = 7.5,
    seed: int = 0,
    clip: str = DEFAULT_CLIP,
    aesthetic: str = DEFAULT_AESTHETIC,
    base: str | None = None,
    mllm: str | None = None,
    pairs: pd.DataFrame | None = None,
) -> dict:
    """Score every method of a run folder on the same (user, item) pairs (`icg evaluate`).

    Args:
        data_dir: platform data folder (with `truth/` on CoverWorld: truth metrics and `oracle`).
        run: run folder: ``preference/``, ``icg/``, ``icg-aesthetic/``, ... as `icg demo` writes.
        out: evaluation folder: ``metrics.json``, ``report.html``, ``covers/<method>/*.png``.
        methods: subset of `METHODS` (default: every method whose inputs exist).
        n_users, n_items: evaluation pairs (`choose_pairs`: users spread over embedding
            clusters, one cold-start user) unless ``pairs`` is given.
        num_inference_steps, guidance_scale, strength: sampling of the ICG methods (use what
            stage B trained with).
        candidates: best-of-K sampling of the ICG methods (``icg-single`` excepted): K draws
            per pair, the one the run's own reward rates best is kept (`load_run_reward`).
        prompt_guidance_scale: guidance of the text-only baselines (the base pipeline default).
        base, mllm: override the base model / MLLM the `icg` adapter records.
    """
    from diffusers import DiffusionPipeline

    from icg.data import load_dataset
    from icg.evaluation import baselines
    from icg.evaluation.preference_eval import has_truth
    from icg.models.icg_model import ICGModel
    from icg.models.mllm import load_mllm
    from icg.models.paths import resolve_model_path
    from icg.pipeline import ICGPipeline
    from icg.rewards import AestheticReward, ClipTowers, PreferenceReward
    from icg.rewards.factory import load_run_reward

    data_dir, run, out = Path(data_dir), Path(run), Path(out)
    unknown = sorted(set(methods or []) - set(METHODS))
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {list(METHODS)}")
    data = load_dataset(data_dir, rejects_dir=out / "rejects")
    truth = None
    if has_truth(data_dir):  # evaluation only: CoverWorld's hidden ground truth
        from icg.world.truth import Truth

        truth = Truth(data_dir)
    available = {"reference"} | ({"oracle"} if truth is not None else set())
    adapters = {m: f for m, (sub, *_) in ICG_METHODS.items() if (f := adapter_folder(run, sub))}
    available |= set(adapters)
    main_adapter = adapters.get("icg") or next(iter(adapters.values()), None)
    if main_adapter is not None or base:
        available |= {"prompt", "mllm-prompt"}
    wanted = [m for m in METHODS if m in (methods or available)]
    missing = sorted(set(wanted) - available)
    if missing:
        raise FileNotFoundError(
            f"run={run}: no inputs for methods {missing} (expected adapters under "
            f"{run}/<icg|icg-aesthetic|...>/adapter, and truth/ for oracle)"
        )
    record = ICGModel.read_config(main_adapter) if main_adapter is not None else {}
    base_name = base or record.get("base_model")
    mllm_name = mllm or record.get("mllm")
    needs_base = any(m in ICG_METHODS or m.endswith("prompt") for m in wanted)
    pipe_base = (
        DiffusionPipeline.from_pretrained(resolve_model_path(base_name)) if needs_base else None
    )
    needs_mllm = any(m in ICG_METHODS or m == "mllm-prompt" for m in wanted)
    mllm_model, processor = load_mllm(resolve_model_path(mllm_name)) if needs_mllm else (None, None)
    size = int(pipe_base.unet.config.sample_size * pipe_base.vae_scale_factor) if pipe_base else 64

    covers = out / "covers"
    sample = {"num_inference_steps": num_inference_steps, "seed": seed}

    clips: dict = {}  # CLIP towers shared by the evaluation and every run's reward
    run_scorers: dict[str, Scorer] = {}

    def run_scorer(sub: str) -> Scorer:
        """The reward run ``sub`` optimised, loaded once (icg and icg-nouser share it)."""
        if sub not in run_scorers:
            run_scorers[sub] = baselines.reward_scorer(load_run_reward(run / sub, clips), data)
        return run_scorers[sub]

    def icg_source(method: str) -> CoverSource:
        sub, personalize, best_of_k = ICG_METHODS[method]

        def source(p: pd.DataFrame) -> np.ndarray:
            model = ICGModel.from_pretrained(adapters[method], mllm_model, processor)
            pipe = ICGPipeline(pipe_base, model)
            k = candidates if best_of_k else 1
            scorer = run_scorer(sub) if k > 1 else None
            try:
                return baselines.generated_source(
                    pipe, data, covers, method, personalize=personalize, size=size,
                    guidance_scale=guidance_scale, strength=strength, candidates=k,
                    scorer=scorer, share=False, **sample,
                )(p)  # fmt: skip
            finally:
                pipe.remove_adapter()

        return source

    sources: dict[str, CoverSource] = {}
    for m in wanted:
        if m == "reference":
            sources[m] = baselines.reference_source(data, size)
        elif m == "oracle":
            sources[m] = baselines.oracle_source(truth)
        elif m in ("prompt", "mllm-prompt"):
            writer = (
                baselines.MllmPromptWriter(mllm_model, processor) if m == "mllm-prompt" else None
            )
            sources[m] = baselines.generated_source(
                baselines.PromptDrawer(pipe_base, writer=writer), data, covers, m,
                personalize=False, size=size, guidance_scale=prompt_guidance_scale, **sample,
            )  # fmt: skip
        else:
            sources[m] = icg_source(m)

    towers = clips[clip] = ClipTowers.from_pretrained(clip)
    scorers = {
        "aesthetic_reward": baselines.reward_scorer(AestheticReward(towers, aesthetic), data)
    }
    if (run / "preference" / "config.json").is_file():
        scorers["preference_score"] = baselines.reward_scorer(
            PreferenceReward(str(run / "preference"), towers), data, "preference_probability"
        )
    if pairs is None:
        pairs = choose_pairs(data, n_users=n_users, n_items=n_items, seed=seed)
    configs = {"world": _read_yaml(data_dir / "world.yaml")}
    for sub in ("preference", "align", *dict.fromkeys(s for s, *_ in ICG_METHODS.values())):
        for name in ("train_config.yaml", "config.yaml"):
            if (run / sub / name).is_file():
                configs[sub] = _read_yaml(run / sub / name)
    configs["evaluation"] = {
        "data": str(data_dir), "run": str(run), "methods": wanted, "pairs": len(pairs),
        "guidance_scale": guidance_scale, "strength": strength, "candidates": candidates,
        "prompt_guidance_scale": prompt_guidance_scale,
        "base": base_name, "mllm": mllm_name, "clip": clip, "aesthetic": aesthetic, **sample,
    }  # fmt: skip
    draw = (
        "from pure noise" if strength >= 1.0 else f"from the reference cover at strength {strength}"
    )
    notes = [
        f"ICG methods draw {draw} with {num_inference_steps} steps and guidance {guidance_scale}; "
        + (
            f"each keeps the best of {candidates} draws per pair under its own run's reward "
            "(icg-nouser: no user embedding and icg's reward without the user, on the same noise "
            "seeds as icg, so the two differ only by the user; icg-single: icg's first draw)."
            if candidates > 1
            else "one draw per pair."
        )
    ]
    return evaluate_methods(
        data, pairs, sources, out, clip=towers, truth=truth, scorers=scorers,
        image_size=size, configs=configs, curves=read_curves(run), seed=seed, notes=notes,
    )  # fmt: skip


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {} if path.is_file() else {}
