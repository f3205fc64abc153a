"""`icg evaluate`: score every method's covers on the same (user, item) pairs.

    evaluate_run(data, run, out, EvalConfig(...))
        select_methods → load the shared models → a CoverSource per method (`methods`)
        → choose_pairs (`pairs`) → evaluate_methods → OUT/metrics.json + OUT/report.html
                                                       (+ personal_gain: `personal`)

Model-side metrics (CLIP embeddings, diversity, downstream recommendation on logged clicks) work
on any data; truth metrics appear only when the data folder has CoverWorld's `truth/`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from icg.config import DEFAULT_AESTHETIC, DEFAULT_CLIP, DEFAULT_GUIDANCE, DEFAULT_STEPS
from icg.evaluation.baselines import CoverSource
from icg.evaluation.downstream import (
    downstream_metrics,
    downstream_note,
    embed_images,
    train_downstream,
)
from icg.evaluation.inputs import load_truth, model_scorers, report_curves, run_configs
from icg.evaluation.methods import (
    METHODS,
    Drawers,
    RunScorers,
    load_generators,
    main_adapter,
    method_source,
    select_methods,
    swap_draw,
)
from icg.evaluation.metrics import diversity, lift_fraction, pair_intervals, truth_metrics
from icg.evaluation.pairs import check_pairs, choose_pairs
from icg.evaluation.personal import SwapControl
from icg.evaluation.recsys import RecModel
from icg.evaluation.report import write_report
from icg.generation import Scorer
from icg.io import atomic_write_json
from icg.safety import prepare_output

logger = logging.getLogger(__name__)

__all__ = ["EvalConfig", "evaluate_methods", "evaluate_run"]


class EvalConfig(BaseModel):
    """How `evaluate_run` samples and scores (validated before any model is loaded).

    Args:
        methods: subset of `METHODS` (default: every method whose inputs exist).
        n_users, n_items: evaluation pairs (`choose_pairs`: users spread over embedding
            clusters, one cold-start user) unless pairs are given.
        num_inference_steps, guidance_scale, strength: sampling of the ICG methods (use what
            stage B trained with); ``strength`` below 1 starts from the reference cover.
        candidates: best-of-K sampling of the ICG methods (``*-single`` excepted): K draws
            per pair, the one the run's own reward rates best is kept (`load_run_reward`).
        user_guidance: ``w_u`` of every ICG draw (`ICGPipeline`): 1 the plain personalized
            draw, 0 the draw without the user; the no-user methods are unaffected.
        prompt_guidance_scale: guidance of the text-only baselines (the base pipeline default).
        seed: pair selection, per-pair noise seeds and the downstream model.
        clip, aesthetic: the CLIP and aesthetic predictor of the model-side metrics.
        base, mllm: override the base model / MLLM the `icg` adapter records.
    """

    model_config = ConfigDict(extra="forbid")

    methods: list[str] | None = None
    n_users: int = Field(8, ge=1)
    n_items: int = Field(16, ge=1)
    num_inference_steps: int = Field(DEFAULT_STEPS, ge=1)
    guidance_scale: float = Field(DEFAULT_GUIDANCE, ge=0)
    strength: float = Field(1.0, gt=0, le=1)
    candidates: int = Field(1, ge=1)
    user_guidance: float = Field(1.0, ge=0)
    prompt_guidance_scale: float = Field(7.5, ge=0)
    seed: int = 0
    clip: str = DEFAULT_CLIP
    aesthetic: str = DEFAULT_AESTHETIC
    base: str | None = None
    mllm: str | None = None

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str] | None) -> list[str] | None:
        unknown = sorted(set(methods or []) - set(METHODS))
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; expected some of {list(METHODS)}")
        return methods


# ---- scoring the covers of given sources ----------------------------------------------------
def cold_start(data, pairs: pd.DataFrame) -> np.ndarray:
    """(N,) bool: the pair's user has no logged impression."""
    seen = set(data.impressions["user_id"]) if data.impressions is not None else set()
    return ~pairs["user_id"].isin(seen).to_numpy()


def draw_covers(name: str, source: CoverSource, pairs: pd.DataFrame) -> tuple[np.ndarray, float]:
    """A method's covers uint8 (N, H, W, 3) for ``pairs`` and the seconds they took."""
    start = time.perf_counter()
    images = source(pairs)
    seconds = time.perf_counter() - start
    if images.shape[0] != len(pairs):
        raise ValueError(f"method {name}: {images.shape[0]} covers for {len(pairs)} pairs")
    return images, round(seconds, 2)


def score_covers(
    images: np.ndarray,
    pairs: pd.DataFrame,
    data,
    *,
    cold: np.ndarray,
    truth=None,
    clip=None,
    rec: RecModel | None = None,
    scorers: dict[str, Scorer] | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """One method's metrics: truth columns, CLIP diversity and CLIPScore, downstream ranking
    (needs the truth's CTR as labels) and the mean of every model-side scorer; and the per-pair
    values (N,) of ``true_ctr`` and of every scorer, for their intervals (`pair_intervals`)."""
    m: dict[str, float] = {}
    per_pair: dict[str, np.ndarray] = {}
    scores = None
    if truth is not None:
        scores = truth.score(images, pairs["user_id"], pairs["item_id"])
        m |= truth_metrics(scores, cold)
        per_pair["true_ctr"] = np.asarray(scores["ctr"], dtype=float)
    if clip is not None:
        emb = embed_images(clip, images)
        m["diversity"] = diversity(emb, pairs["item_id"].to_numpy())
        if clip.tokenizer is not None:
            titles = data.items.set_index("item_id").loc[pairs["item_id"], "title"].tolist()
            text = clip.text_embeds(titles).numpy()
            m["clipscore"] = float(np.mean(100.0 * np.maximum((emb * text).sum(1), 0.0)))
        if rec is not None and scores is not None:
            m |= downstream_metrics(rec, data, pairs, emb, scores["ctr"])
    for metric, scorer in (scorers or {}).items():
        values = scorer(pairs["user_id"].tolist(), pairs["item_id"].tolist(), images)
        m[metric] = float(np.mean(values))
        per_pair[metric] = np.asarray(values, dtype=float)
    return m, per_pair


def add_lift_fraction(results: dict[str, dict]) -> None:
    """Every method's `lift_fraction` between ``reference`` (0) and ``oracle`` (1), in place."""
    ref, orc = results["reference"]["true_ctr"], results["oracle"]["true_ctr"]
    for m in results.values():
        m["lift_fraction"] = lift_fraction(m["true_ctr"], ref, orc)


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
    swap: SwapControl | None = None,
    banner: str = "",
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
        image_size: cover side the downstream model reads the logged covers at.
        configs: report sections; ``configs["world"]`` is also written to metrics.json.
        curves: training curves for the report (`report_curves`).
        seed: the downstream model's seed.
        notes: paragraphs for the report (how the methods were drawn).
        swap: the user-swap control (`SwapControl`): the top-level ``personal_gain`` of
            ``icg``'s single draw (reusing ``icg-single``'s covers when it is a method), or None.
        banner: a warning the report opens with (`write_report`), e.g. a smoke-test budget.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cold = cold_start(data, pairs)
    notes = list(notes)
    rec: RecModel | None = None
    if clip is not None and data.impressions is not None:
        rec, logged_auc = train_downstream(data, clip, image_size, seed=seed)
        notes.append(downstream_note(logged_auc))
    results: dict[str, dict] = {}
    covers: dict[str, np.ndarray] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    for name, source in sources.items():
        covers[name], seconds = draw_covers(name, source, pairs)
        m: dict[str, float] = {"n_pairs": len(pairs), "seconds": seconds}
        scored, samples[name] = score_covers(
            covers[name], pairs, data, cold=cold, truth=truth, clip=clip, rec=rec, scorers=scorers
        )
        m |= scored
        results[name] = m
        rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}
        logger.info("%s: %s", name, rounded)
    if truth is not None and "reference" in results and "oracle" in results:
        add_lift_fraction(results)
    metrics = {
        "world": (configs or {}).get("world", {}),
        "methods": results,
        "intervals": pair_intervals(samples),
    }
    gain = swap(pairs, cold, covers.get("icg-single")) if swap is not None else None
    if gain is not None:
        metrics["personal_gain"] = gain
        logger.info("personal_gain: %s", gain)
    atomic_write_json(out / "metrics.json", metrics)
    write_report(
        out / "report.html",
        metrics=metrics,
        grid=cover_grid_rows(pairs, covers, cold, data),
        curves=curves or {},
        configs=configs or {},
        notes=notes,
        banner=banner,
    )
    return metrics


def cover_grid_rows(pairs, covers, cold, data, n_rows: int = 12) -> list[dict]:
    """Up to ``n_rows`` pairs for the report's cover grid, every method's cover side by side."""
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


# ---- `icg evaluate`: every method of a run folder ------------------------------------------
def sampling_note(cfg: EvalConfig) -> str:
    """The report paragraph that says how the ICG methods drew their covers."""
    draw = (
        "from pure noise"
        if cfg.strength >= 1.0
        else f"from the reference cover at strength {cfg.strength}"
    )
    how = (
        f"icg and icg-nouser keep the best of {cfg.candidates} draws per pair under their run's "
        "reward (icg-nouser: no user embedding and icg's reward without the user, on the same "
        "noise seeds as icg, so the two differ only by the user); icg-single and "
        "icg-nouser-single are the first draw of icg and of icg-nouser, on the same seeds, and "
        "the single-reward runs (icg-aesthetic, icg-relevance, icg-preference) draw once."
        if cfg.candidates > 1
        else "one draw per pair."
    )
    return (
        f"ICG methods draw {draw} with {cfg.num_inference_steps} steps, guidance "
        f"{cfg.guidance_scale} and user guidance {cfg.user_guidance}; {how}"
    )


VARIANT_NOTE = (
    "variant-select: for each pair, the run's preference model (on the CLIP it records) picks "
    "the best of the item's existing cover variants (the covers the platform has shown for it), "
    "as artwork personalization does today; users without history are scored from their "
    "platform embedding without a learned user vector."
)


def evaluate_run(
    data_dir: Path | str,
    run: Path | str,
    out: Path | str,
    config: EvalConfig | None = None,
    *,
    pairs: pd.DataFrame | None = None,
    overwrite: bool = False,
    banner: str = "",
) -> dict:
    """Score every method of a run folder on the same (user, item) pairs (`icg evaluate`).

    Args:
        data_dir: platform data folder (with `truth/` on CoverWorld: truth metrics and `oracle`).
        run: run folder: ``preference/``, ``icg/``, ``icg-aesthetic/``, ... as `icg demo` writes.
        out: evaluation folder: ``metrics.json``, ``report.html``, ``covers/<method>/*.png``.
        config: sampling and scoring (`EvalConfig`; default: its defaults).
        pairs: user_id, item_id rows (default: `choose_pairs` with the config's sizes).
        overwrite: replace a previous evaluation in ``out`` (`icg.safety.prepare_output`);
            without it a non-empty ``out`` is refused before anything loads.
        banner: a warning report.html opens with (the quick demo's smoke-test budget).
    """
    from icg.data import load_dataset
    from icg.data.rejects import save_rejects
    from icg.models.icg_model import ICGModel
    from icg.rewards import ClipTowers

    cfg = config or EvalConfig()
    data_dir, run, out = Path(data_dir), Path(run), Path(out)
    data = load_dataset(data_dir)
    if pairs is not None:
        check_pairs(pairs, data)
    prepare_output(out, kind="evaluate", overwrite=overwrite, inputs=[data_dir])
    save_rejects(data, out / "rejects")
    truth = load_truth(data_dir)
    wanted, adapters = select_methods(
        run, cfg.methods, truth=truth is not None, base=cfg.base,
        variants=data.impressions is not None,
    )  # fmt: skip
    main = main_adapter(adapters)
    record = ICGModel.read_config(main) if main is not None else {}
    base_name = cfg.base or record.get("base_model")
    mllm_name = cfg.mllm or record.get("mllm")
    base, mllm, processor, size = load_generators(wanted, base_name, mllm_name)

    clips: dict = {}  # CLIP towers shared by the evaluation and every run's reward
    drawers = Drawers(
        data=data, covers=out / "covers", size=size, base=base, mllm=mllm,
        processor=processor, truth=truth, adapters=adapters,
        run_scorers=RunScorers(run, data, clips),
    )  # fmt: skip
    towers = clips[cfg.clip] = ClipTowers.from_pretrained(cfg.clip)
    sources = {m: method_source(m, drawers, cfg) for m in wanted}
    swap = None  # personal gain: icg's single draw for its user against one for another user
    if truth is not None and {"icg", "icg-single"} & set(wanted):
        swap = SwapControl(truth, data, swap_draw(drawers, cfg))
    scorers = model_scorers(run, data, towers, cfg.aesthetic)
    if pairs is None:
        pairs = choose_pairs(data, n_users=cfg.n_users, n_items=cfg.n_items, seed=cfg.seed)
    configs = run_configs(data_dir, run)
    configs["evaluation"] = {
        "data": str(data_dir), "run": str(run), "methods": wanted, "pairs": len(pairs),
        "guidance_scale": cfg.guidance_scale, "strength": cfg.strength,
        "candidates": cfg.candidates, "prompt_guidance_scale": cfg.prompt_guidance_scale,
        "user_guidance": cfg.user_guidance,
        "base": base_name, "mllm": mllm_name, "clip": cfg.clip, "aesthetic": cfg.aesthetic,
        "num_inference_steps": cfg.num_inference_steps, "seed": cfg.seed,
    }  # fmt: skip
    return evaluate_methods(
        data, pairs, sources, out, clip=towers, truth=truth, scorers=scorers,
        image_size=size, configs=configs, curves=report_curves(run), seed=cfg.seed,
        notes=[sampling_note(cfg)] + ([VARIANT_NOTE] if "variant-select" in wanted else []),
        swap=swap, banner=banner,
    )  # fmt: skip
