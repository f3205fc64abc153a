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
from icg.matrix.engines import MatrixJobError, run_phase
from icg.matrix.jobs import RESULT_FILE, job_done
from icg.matrix.plan import KINDS, MatrixPlan, MatrixSpec, plan_matrix
from icg.matrix.table import write_table

logger = logging.getLogger(__name__)

DEPENDS = ("world", "preference", "align")  # payload fields naming the folders a job reads


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
        MatrixJobError: some jobs failed; every job that does not read a failed one ran (the
            jobs that do are skipped and listed), the table holds every cell finished so far,
            and a rerun retries only what is missing.
    """
    out = Path(out).resolve()
    plan = plan_matrix(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "spec.json", spec.model_dump(mode="json"))
    failures: list[str] = []
    failed: set[str] = set()  # folders of jobs that failed or were skipped
    try:
        for kind in KINDS:
            jobs = []
            for job in plan.phases[kind]:
                broken = [d for d in map(job.payload.get, DEPENDS) if d is not None and d in failed]
                if broken:  # a stage it reads failed: skip it, run the rest of the phase
                    failures.append(f"{job.dir}: skipped, it reads {broken[0]}, which failed")
                    failed.add(str(job.dir))
                else:
                    jobs.append(job)
            try:
                ran = run_phase(jobs, engine, workers, out, address)
            except MatrixJobError as err:
                failures += err.failures
                failed |= {str(j.dir) for j in jobs if not job_done(j)}
                ran = len(err.failures)
            logger.info("%s: %d job(s) ran, %d done already, %d skipped", kind, ran,
                        len(jobs) - ran, len(plan.phases[kind]) - len(jobs))  # fmt: skip
        if failures:
            raise MatrixJobError(failures)
    finally:  # the table of what finished, also when a phase failed
        table = write_table(
            out, collect_results(plan), [r.name for r in spec.recipes], spec.baseline,
            spec=spec.model_dump(mode="json"), candidates=spec.candidates,
        )  # fmt: skip
    return table
