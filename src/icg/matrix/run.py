"""`icg bench recipes`: run a recipe matrix into a folder and write its table.

    run_matrix(MatrixSpec(recipes=[load_recipe("a.yaml"), ...], worlds=[3, 11, 5]), "M")
        plan_matrix → per phase (worlds, preference models, stage A, cells): run_phase
        → M/matrix.json + M/matrix.md

Rerunning the same command continues an interrupted matrix: finished jobs are skipped, training
stages resume from their checkpoints, and the table is rewritten from every finished cell.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from icg.io import atomic_write_json
from icg.matrix.engines import run_phase
from icg.matrix.jobs import RESULT_FILE
from icg.matrix.plan import KINDS, MatrixPlan, MatrixSpec, plan_matrix
from icg.matrix.table import write_table

logger = logging.getLogger(__name__)


def describe(spec: MatrixSpec, plan: MatrixPlan) -> dict[str, Any]:
    """What a matrix would run (``--dry-run``): the resolved recipes, jobs per phase, and every
    cell with the configs of its stages."""
    payloads = {str(j.dir): j.payload for jobs in plan.phases.values() for j in jobs}
    cells = []
    for c in plan.cells:
        p = c.job.payload
        cells.append({
            "recipe": c.recipe, "world": c.world, "train_seed": c.train_seed,
            "dir": str(c.job.dir), "world_dir": p["world"],
            "preference": {"dir": p["preference"], **payloads[p["preference"]]["config"]},
            "align": {"dir": p["align"], **payloads[p["align"]]["config"]},
            "stage_b": p["stage_b"], "reward": p["reward"], "evaluation": p["evaluation"],
        })  # fmt: skip
    return {
        "spec": spec.model_dump(mode="json"),
        "pairs_per_world": "x".join(map(str, spec.pair_grid)),
        "jobs": {kind: len(jobs) for kind, jobs in plan.phases.items()},
        "cells": cells,
    }


def collect_results(plan: MatrixPlan) -> list[dict[str, Any]]:
    """Every finished cell's result, labelled with the plan's recipe (cells shared by recipes
    with equal settings count for each)."""
    rows = []
    for cell in plan.cells:
        file = cell.job.dir / RESULT_FILE
        if file.is_file():
            result = json.loads(file.read_text())
            # the cell's folder relative to the matrix folder, so a table can be published
            where = f"{cell.job.dir.parent.name}/{cell.job.dir.name}"
            rows.append({**result, "recipe": cell.recipe, "world": cell.world,
                         "train_seed": cell.train_seed, "dir": where})  # fmt: skip
    return rows


def run_matrix(
    spec: MatrixSpec,
    out: str | Path,
    *,
    engine: str = "local",
    workers: int = 1,
    address: str | None = None,
) -> dict[str, Any]:
    """Run every job of ``spec`` into ``out`` and write the table; returns matrix.json's content.

    Args:
        spec: the recipes, worlds, training seeds and evaluation sizes.
        out: the matrix folder (``worlds/``, ``preference/``, ``align/``, ``cells/<hash>/``).
        engine: ``local`` (this process), ``process`` (a process per job) or ``ray``.
        workers: jobs at once (``process``; ``ray``: CPUs of a local Ray instance).
        address: ``ray``: the cluster to join (default: start a local instance).

    Raises:
        MatrixJobError: some jobs failed; the other jobs of their phase ran, the table holds
            every cell finished so far, and a rerun retries only what is missing.
    """
    out = Path(out).resolve()
    plan = plan_matrix(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "spec.json", spec.model_dump(mode="json"))
    try:
        for kind in KINDS:
            ran = run_phase(plan.phases[kind], engine, workers, out, address)
            logger.info("%s: %d job(s) ran, %d done already", kind, ran,
                        len(plan.phases[kind]) - ran)  # fmt: skip
    finally:  # the table of what finished, also when a phase failed
        table = write_table(
            out, collect_results(plan), [r.name for r in spec.recipes], spec.baseline,
            spec=spec.model_dump(mode="json"), candidates=spec.candidates,
        )  # fmt: skip
    return table
