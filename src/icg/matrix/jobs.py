"""Running one job of the matrix (`icg.matrix.plan.Job`): the demo's stage functions, cached.

A job is done when its folder holds what the stage writes last (the world's ``world.yaml``, the
preference model's ``config.json``, stage A's adapter record, a cell's ``result.json``, written
atomically); a done job is skipped. A training stage interrupted midway continues from its
latest checkpoint (its folder's ``run.json`` names the same config, since the folder is named by
the config's hash).

``python -m icg.matrix.jobs JOB.json`` runs one job in its own process (`--engine process`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from icg.checkpoints import write_run_config
from icg.evaluation.personal import mean_interval
from icg.io import atomic_write_json
from icg.layout import STATS_FILE
from icg.matrix.evaluate import CELL_METHODS, SWAPPED, evaluate_cell, swapped_ctr
from icg.matrix.plan import Job
from icg.training.align import AlignConfig, run_align
from icg.training.draft import DraftTrainer
from icg.training.preference import PreferenceConfig, train_preference
from icg.training.reward import RewardConfig, run_reward
from icg.world.config import WorldConfig
from icg.world.generate import generate_world

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
PAIRS_FILE = "pairs.parquet"  # per pair: the true CTR of each method (and ``swapped``)
MARKERS = {
    "world": "world.yaml",
    "preference": "config.json",
    "align": "adapter/icg_config.json",
    "cell": RESULT_FILE,
}


def job_done(job: Job) -> bool:
    """Whether ``job``'s folder holds its finished output (a cell asked for the personal-gain
    control also needs it in its result)."""
    marker = job.dir / MARKERS[job.kind]
    if job.kind == "cell" and job.payload.get("personal") and marker.is_file():
        return "personal_gain" in json.loads(marker.read_text())
    return marker.is_file()


def _resume(out: Path) -> bool:
    """Continue a training stage that started in ``out`` (same config: the folder is its hash)."""
    return (out / "run.json").is_file()


def run_world(job: Job) -> None:
    """Generate the world (atomically: a half-written world never looks finished)."""
    generate_world(job.dir, WorldConfig(**job.payload), overwrite=True)


def run_preference(job: Job) -> None:
    """Fit the preference model on the world's click log."""
    p = job.payload
    train_preference(p["world"], job.dir, PreferenceConfig(**p["config"]), overwrite=True)


def run_align_job(job: Job) -> None:
    """Stage A (resumes from its checkpoints)."""
    p = job.payload
    cfg = AlignConfig(**p["config"], data=p["world"], out=job.dir, preference=p["preference"])
    run_align(cfg, resume=_resume(job.dir), overwrite=not _resume(job.dir))


def _link_preference(run: Path, preference: Path) -> None:
    """``run/preference`` → the shared preference model (variant-select and the run's reward read
    it there), as a relative link so the matrix folder can move."""
    link = run / "preference"
    if link.is_symlink() or link.exists():
        return
    run.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(preference, run), target_is_directory=True)


def train_stage_b(p: dict[str, Any], out: Path) -> None:
    """Stage B from the cell's stage A (resumes from its checkpoints)."""
    cfg = RewardConfig(**p["reward"], data=p["world"], init=p["align"], out=out,
                       preference=p["preference"])  # fmt: skip
    run_reward(cfg, resume=_resume(out), overwrite=not _resume(out))


def calibrate_stage_a(p: dict[str, Any], out: Path) -> None:
    """Stage A alone as a run folder best-of-K can rank with: stage A's adapter unchanged, and
    the recipe's reward with statistics measured on ``max_steps`` batches of stage A's own draws
    (the statistics a stage-B run would start learning from), without any update."""
    cfg = RewardConfig(**p["reward"], data=p["world"], init=p["align"], out=out,
                       preference=p["preference"])  # fmt: skip
    recipe = DraftTrainer(cfg)
    try:
        recipe.setup()
        recipe.rewards.train()  # statistics update on every scored batch
        with torch.no_grad():
            for step in range(cfg.max_steps):
                recipe.compute_loss(step)
        recipe.rewards.eval()
        write_run_config(out, cfg)
        recipe.save()
    finally:
        recipe.cleanup()


def code_fingerprint() -> str:
    """16 hex digits of sha256 over the ``icg`` package's Python sources (relative path and
    bytes, sorted): cells trained by different code carry different fingerprints, which the
    package version alone does not tell apart (stage B's result moves with any change of its
    floating-point arithmetic)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def personal_summary(scores: pd.DataFrame) -> dict[str, Any]:
    """A cell's ``personal_gain``: `mean_interval` of ``one_draw - swapped`` over its pairs with a
    swap partner, with the differences' ``sd`` (the table pools cells of a world with it)."""
    diffs = (scores["one_draw"] - scores[SWAPPED]).dropna().to_numpy()
    sd = float(diffs.std(ddof=1)) if len(diffs) > 1 else None
    return {**mean_interval(diffs), "sd": sd}


def add_personal(job: Job, scores: pd.DataFrame, result: dict[str, Any]) -> None:
    """A cell finished without the personal-gain control: draw it, add ``swapped`` to
    ``scores`` and ``personal_gain`` to ``result``, and write both."""
    p = job.payload
    t0 = time.perf_counter()
    swapped = swapped_ctr(Path(p["world"]), job.dir / "run", job.dir / "eval", p["evaluation"])
    same = ["user_id", "item_id"]
    if not scores[same].reset_index(drop=True).equals(swapped[same]):
        raise RuntimeError(f"{job.dir}: the personal control drew other pairs than the cell's")
    scores[SWAPPED] = swapped[SWAPPED].to_numpy()
    result.setdefault("seconds", {})["personal"] = round(time.perf_counter() - t0, 1)
    write_cell(job, scores, result)


def write_cell(job: Job, scores: pd.DataFrame, result: dict[str, Any]) -> None:
    """Write pairs.parquet, then result.json (with ``personal_gain`` when ``scores`` has the
    ``swapped`` column)."""
    if SWAPPED in scores:
        result["personal_gain"] = personal_summary(scores)
        logger.info("personal_gain: %s", result["personal_gain"])
    scores.to_parquet(job.dir / PAIRS_FILE, index=False)
    atomic_write_json(job.dir / RESULT_FILE, result)


def run_cell(job: Job) -> None:
    """Train the cell's stage B (or calibrate stage A alone), evaluate it, write result.json; a
    cell finished before without the personal-gain control it now asks for only adds it."""
    p = job.payload
    if (job.dir / RESULT_FILE).is_file():
        result = json.loads((job.dir / RESULT_FILE).read_text())
        add_personal(job, pd.read_parquet(job.dir / PAIRS_FILE), result)
        return
    run = job.dir / "run"
    icg = run / "icg"
    _link_preference(run, Path(p["preference"]))
    icg.mkdir(parents=True, exist_ok=True)
    train_s = None  # seconds of stage B in this call (None: trained by an earlier call)
    # both stage-B savers write the adapter, then the reward statistics best of K ranks with
    if not ((icg / "adapter" / "icg_config.json").is_file() and (icg / STATS_FILE).is_file()):
        t0 = time.perf_counter()
        (train_stage_b if p["stage_b"] else calibrate_stage_a)(p, icg)
        train_s = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    scores = evaluate_cell(Path(p["world"]), run, job.dir / "eval", p["evaluation"],
                           personal=bool(p.get("personal")))  # fmt: skip
    result = {
        **p["label"],
        "stage_b": p["stage_b"],
        "n_pairs": len(scores),
        "true_ctr": {c: float(scores[c].mean()) for c in CELL_METHODS.values()},
        "seconds": {"stage_b": train_s, "evaluate": round(time.perf_counter() - t0, 1)},
        "code": code_fingerprint(),
    }
    write_cell(job, scores, result)


RUNNERS = {
    "world": run_world,
    "preference": run_preference,
    "align": run_align_job,
    "cell": run_cell,
}


def run_job(job: Job | dict[str, Any]) -> str:
    """Run ``job`` unless it is done; returns its folder. Writes ``job.json`` beside its output
    (what the job was, for a reader of the matrix folder)."""
    job = job if isinstance(job, Job) else Job.from_json(job)
    if job_done(job):
        logger.info("%s %s: done already, skipped", job.kind, job.dir.name)
        return str(job.dir)
    job.dir.mkdir(parents=True, exist_ok=True)
    if job.kind != "world":  # the world's folder is replaced whole by generate_world
        atomic_write_json(job.dir / "job.json", job.to_json())
    logger.info("%s %s ...", job.kind, job.dir.name)
    RUNNERS[job.kind](job)
    return str(job.dir)


def main(argv: list[str] | None = None) -> None:
    """``python -m icg.matrix.jobs JOB.json``: run one job (the process engine's worker)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m icg.matrix.jobs JOB.json")
    run_job(json.loads(Path(args[0]).read_text()))


if __name__ == "__main__":
    main()
