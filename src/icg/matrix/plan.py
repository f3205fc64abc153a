"""The matrix's plan: recipes × worlds × training seeds as jobs, each in a folder named by a hash
of everything that determines its result.

    world (per world seed)  ─►  preference (per world, training seed, preference settings)
                            ─►  align      (per preference model and stage-A settings)
                            ─►  cell       (per stage A, stage-B settings, sampling, evaluation)

Recipes that do not change a stage share it: the world is generated once per world seed, the
preference model trained once per (world, training seed) unless a recipe changes its settings,
and stage A once per (preference model, stage-A settings), so a stage-B-only recipe costs only
its stage B. A job's folder is ``M/<kind>/<hash>``; the hash covers the job's own settings, the
hashes of the jobs it reads, and `FORMAT` with the package version (a change to what a cell
computes bumps `FORMAT`, so no stale cell is reused).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from icg import __version__
from icg.demo import FULL
from icg.matrix.spec import Recipe

FORMAT = 1  # what a cell computes and writes; bump when that changes
KINDS = ("world", "preference", "align", "cell")


class MatrixSpec(BaseModel):
    """What a matrix runs (validated before anything is trained).

    Args:
        recipes: the recipes (distinct names).
        baseline: the recipe every other is compared with (default: the first).
        worlds: CoverWorld seeds; each also seeds the evaluation's pairs and noise, so the
            draws are paired across recipes and training seeds.
        train_seeds: training seeds 0..N-1 per world (preference model, stage A, stage B).
        pairs: evaluation pairs per world (at least; users × items of `choose_pairs`).
        candidates: K of best of K.
        world_size: (items, users, impressions) of every world (default: the full demo's).
        personal: each cell also draws the personal-gain control (one draw made for another
            user, `icg.matrix.evaluate.swapped_ctr`); not part of a cell's hash, so a cell
            finished without it only adds it.
    """

    model_config = ConfigDict(extra="forbid")

    recipes: list[Recipe] = Field(min_length=1)
    baseline: str | None = None
    worlds: list[int] = Field(min_length=1)
    train_seeds: int = Field(2, ge=1)
    pairs: int = Field(256, ge=1)
    candidates: int = Field(8, ge=2)
    world_size: tuple[int, int, int] = (FULL.n_items, FULL.n_users, FULL.n_impressions)
    personal: bool = False

    @model_validator(mode="after")
    def _check(self) -> MatrixSpec:
        names = [r.name for r in self.recipes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"recipes: names must differ, {twice} appear twice")
        if self.baseline is None:
            self.baseline = names[0]
        elif self.baseline not in names:
            raise ValueError(f"baseline: {self.baseline!r} is not one of the recipes {names}")
        if len(set(self.worlds)) != len(self.worlds):
            raise ValueError(f"worlds: each world seed once, got {self.worlds}")
        if min(self.world_size) < 1:
            raise ValueError(f"world_size: expected positive items,users,impressions, got "
                             f"{self.world_size}")  # fmt: skip
        return self

    @property
    def pair_grid(self) -> tuple[int, int]:
        """(users, items) of the evaluation: about square, at least ``pairs`` pairs."""
        users = max(1, round(math.sqrt(self.pairs)))
        return users, math.ceil(self.pairs / users)


def config_hash(values: Any) -> str:
    """16 hex digits of sha256 over canonical JSON (sorted keys): equal settings, equal hash."""
    text = json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Job:
    """One unit of work: ``kind`` (`KINDS`), its folder, and everything it needs (JSON)."""

    kind: str
    dir: Path
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "dir": str(self.dir), "payload": self.payload}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> Job:
        return cls(values["kind"], Path(values["dir"]), values["payload"])


@dataclass(frozen=True)
class Cell:
    """One (recipe, world, training seed) of the table and the cell job that measures it."""

    recipe: str
    world: int
    train_seed: int
    job: Job


@dataclass
class MatrixPlan:
    """The jobs of a matrix in dependency order (each phase's jobs are independent)."""

    phases: dict[str, list[Job]] = field(default_factory=lambda: {k: [] for k in KINDS})
    cells: list[Cell] = field(default_factory=list)

    def add(self, job: Job) -> Job:
        """Add ``job`` unless a job with its folder is there already (a shared stage)."""
        if all(j.dir != job.dir for j in self.phases[job.kind]):
            self.phases[job.kind].append(job)
        return job


def plan_matrix(spec: MatrixSpec, out: str | Path) -> MatrixPlan:
    """Every job of ``spec`` under ``out`` (absolute paths), shared stages once."""
    out = Path(out).resolve()
    plan = MatrixPlan()
    n_items, n_users, n_impressions = spec.world_size
    users, items = spec.pair_grid
    code = {"format": FORMAT, "version": __version__}
    for w in spec.worlds:
        world_cfg = {"seed": w, "n_items": n_items, "n_users": n_users,
                     "n_impressions": n_impressions}  # fmt: skip
        world_key = config_hash({"world": world_cfg, **code})
        world = plan.add(Job("world", out / "worlds" / f"seed{w}-{world_key}", world_cfg))
        for seed in range(spec.train_seeds):
            for recipe in spec.recipes:
                pref_cfg = recipe.preference_config(seed)
                pref_key = config_hash({"world": world_key, "preference": pref_cfg, **code})
                pref = plan.add(Job("preference", out / "preference" / pref_key,
                                    {"world": str(world.dir), "config": pref_cfg}))  # fmt: skip
                align_cfg = recipe.align_config(seed)
                align_key = config_hash({"preference": pref_key, "align": align_cfg, **code})
                align = plan.add(Job("align", out / "align" / align_key, {
                    "world": str(world.dir), "preference": str(pref.dir), "config": align_cfg,
                }))  # fmt: skip
                cell_cfg = {
                    "stage_b": recipe.trains_stage_b,
                    "reward": recipe.reward_config(seed),
                    "evaluation": {
                        "n_users": users, "n_items": items, "candidates": spec.candidates,
                        "seed": w, **recipe.sampling.model_dump(),
                    },
                }  # fmt: skip
                cell_key = config_hash({"align": align_key, "cell": cell_cfg, **code})
                payload = {
                    "world": str(world.dir), "preference": str(pref.dir),
                    "align": str(align.dir), **cell_cfg,
                    "label": {"recipe": recipe.name, "world": w, "train_seed": seed},
                    "personal": spec.personal,
                }  # fmt: skip
                job = plan.add(Job("cell", out / "cells" / cell_key, payload))
                plan.cells.append(Cell(recipe.name, w, seed, job))
    return plan
