"""A cell's evaluation: per (user, item) pair, the true CTR of one draw, best of K, the
platform's reference cover and `variant-select`, on the world's truth (evaluation side only).

It draws with the method table of `icg evaluate` (`icg.evaluation.methods`) and scores with
CoverWorld's `Truth`, without the report's extras (CLIP metrics, downstream recommender, user
swap), which a matrix of many cells does not read. The pairs and every draw's noise seed come
from the world's seed alone, so the same pairs and draws are compared across recipes and
training seeds (common random numbers). With the personal-gain control (`swapped_ctr`), each
pair's single draw is also made for another user and scored for the pair's user.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from icg.data import load_dataset
from icg.evaluation.inputs import load_truth
from icg.evaluation.methods import (
    Drawers,
    RunScorers,
    load_generators,
    main_adapter,
    method_source,
    select_methods,
    swap_draw,
)
from icg.evaluation.personal import SwapControl
from icg.evaluation.run import EvalConfig, cold_start, draw_covers
from icg.models.icg_model import ICGModel
from icg.pairs import choose_pairs

logger = logging.getLogger(__name__)

# method of `icg evaluate` → column of the cell's scores
CELL_METHODS = {
    "reference": "reference",
    "variant-select": "variant_select",
    "icg-single": "one_draw",
    "icg": "best_of_k",
}
SWAPPED = "swapped"  # column of `swapped_ctr`


def _setup(world: Path, run: Path, out: Path, settings: dict[str, Any], methods: list[str]):
    """``(cfg, truth, data, drawers, pairs)`` of a cell's evaluation drawing ``methods``."""
    truth = load_truth(world)
    if truth is None:
        raise FileNotFoundError(f"{world}: no truth/ folder; the matrix needs a CoverWorld")
    cfg = EvalConfig(methods=methods, **settings)
    data = load_dataset(world)
    wanted, adapters = select_methods(run, cfg.methods, truth=True, base=None)
    record = ICGModel.read_config(main_adapter(adapters))
    base, mllm, processor, size = load_generators(
        wanted, record.get("base_model"), record.get("mllm")
    )
    drawers = Drawers(
        data=data, covers=out / "covers", size=size, base=base, mllm=mllm,
        processor=processor, truth=truth, adapters=adapters,
        run_scorers=RunScorers(run, data, {}),
    )  # fmt: skip
    pairs = choose_pairs(data, n_users=cfg.n_users, n_items=cfg.n_items, seed=cfg.seed)
    return cfg, truth, data, drawers, pairs


def swapped_ctr(world: Path, run: Path, out: Path, settings: dict[str, Any]) -> pd.DataFrame:
    """The personal-gain control of a cell (`icg.evaluation.personal.SwapControl`): per pair
    (user A, item), ``swapped``, A's true CTR of the single draw made for A's swap partner on A's
    noise seed (NaN for a cold or partnerless user); with ``user_id``, ``item_id``. A's own single
    draw is the cell's ``one_draw``, so ``one_draw - swapped`` is the pair's personal gain."""
    cfg, truth, data, drawers, pairs = _setup(world, run, out, settings, ["icg-single"])
    scores = pairs[["user_id", "item_id"]].copy()
    scores[SWAPPED] = _swapped(cfg, truth, data, drawers, pairs)
    return scores


def _swapped(cfg: EvalConfig, truth, data, drawers: Drawers, pairs: pd.DataFrame) -> np.ndarray:
    """`swapped_ctr`'s column, drawn with an evaluation's loaded models."""
    swap = SwapControl(truth, data, swap_draw(drawers, cfg))
    return swap.swapped_ctr(pairs, cold_start(data, pairs))


def evaluate_cell(
    world: Path, run: Path, out: Path, settings: dict[str, Any], *, personal: bool = False
) -> pd.DataFrame:
    """Draw and score every `CELL_METHODS` method of ``run`` on the world's pairs.

    Args:
        world: the CoverWorld folder (with ``truth/``).
        run: the cell's run folder (``icg/`` adapter and reward, ``preference/``).
        out: where the generated covers go (``covers/<method>/``).
        settings: ``n_users``, ``n_items``, ``candidates``, ``seed`` (the world's) and the
            sampling fields of `icg.evaluation.run.EvalConfig`.
        personal: also the `swapped_ctr` column, with the same loaded models.

    Returns:
        One row per pair: ``user_id``, ``item_id`` and the true CTR of each method under its
        `CELL_METHODS` column name (and ``swapped``).
    """
    cfg, truth, data, drawers, pairs = _setup(world, run, out, settings, list(CELL_METHODS))
    scores = pairs[["user_id", "item_id"]].copy()
    for method, column in CELL_METHODS.items():
        images, seconds = draw_covers(method, method_source(method, drawers, cfg), pairs)
        scores[column] = truth.score(images, pairs["user_id"], pairs["item_id"])["ctr"]
        logger.info("%s: true CTR %.4f (%.1f s)", method, scores[column].mean(), seconds)
    if personal:
        scores[SWAPPED] = _swapped(cfg, truth, data, drawers, pairs)
    return scores
