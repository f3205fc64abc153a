"""`BatchConfig`: what `icg batch` draws, where, and on which engine (validated before any work)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from icg.config import DEFAULT_GUIDANCE, DEFAULT_STEPS, read_yaml_mapping
from icg.layout import ICG_CONFIG_FILE, PREFERENCE_CONFIG_FILE, PREFERENCE_RUN, RUN_CONFIG_FILE
from icg.models.paths import resolve_adapter_dir

SAMPLING_DEFAULTS = {
    "num_inference_steps": DEFAULT_STEPS,
    "guidance_scale": DEFAULT_GUIDANCE,
    "user_guidance": 1.0,
}
"""Used when neither the command line nor the stage-B run's ``config.yaml`` sets them."""


class BatchConfig(BaseModel):
    """Settings of one batch generation.

    Args:
        run: a run folder holding ``icg/`` (and ``preference/``), a stage-B run folder
            (``RUN/icg``) or an adapter folder.
        data: the platform data folder: ``items`` and ``users`` tables (one file each, or a
            folder of parquet files, hive partitions allowed).
        out: the output folder.
        segments: the number of user segments (k-means); ignored by ``segment_by="user"``.
        segment_by: ``kmeans`` on user embeddings, ``column`` (the users table's own
            ``segment`` column) or ``user`` (every user their own segment: the per-user cost).
        candidates: draws per (segment, item); the scorer keeps the segment's best.
        num_inference_steps, guidance_scale, user_guidance: sampling (``None``: the stage-B
            run's own, else `SAMPLING_DEFAULTS`).
        seed: base seed; draw k of (segment, item) has seed
            ``pair_seed(seed, segment key, item_id, k)``.
        batch_size: images per pipeline call.
        partition_size: (segment, item) units per partition: the unit of resume and of a
            manifest part file (``None``: `auto_partition_size` of the unit count).
        engine: ``ray`` (Ray Data, an actor pool) or ``local`` (one process, no Ray).
        workers: actors (pipelines) in the pool; the local engine has one.
        threads: torch threads per worker (default: the CPUs divided among the workers).
        address: a Ray cluster to join (default: start a local instance).
        num_cpus: CPUs of the local Ray instance (default: all).
        pick: ``preference``: each user's preference model picks among the item's covers;
            ``segment``: every user gets their segment's cover. Default ``preference`` when a
            preference model is found.
        pick_segments: with ``pick="preference"``, the covers of the user's this many nearest
            segments are the choices (``None``: every segment's).
        preference: the preference model folder (default ``RUN/preference`` when present).
        pairs: a parquet file of the wanted (user_id, item_id) pairs (default: every user ×
            every item); only the units these pairs need are drawn.
        max_pairs: refuse an assignment table of more (user, item) rows than this.
    """

    model_config = ConfigDict(extra="forbid")

    run: Path
    data: Path
    out: Path
    segments: int = Field(16, ge=1)
    segment_by: Literal["kmeans", "column", "user"] = "kmeans"
    candidates: int = Field(1, ge=1)
    num_inference_steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = Field(None, ge=0)
    user_guidance: float | None = Field(None, ge=0)
    seed: int = 0
    batch_size: int = Field(16, ge=1)
    partition_size: int | None = Field(None, ge=1)
    engine: Literal["ray", "local"] = "ray"
    workers: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    pick: Literal["preference", "segment"] | None = None
    pick_segments: int | None = Field(None, ge=1)
    preference: Path | None = None
    pairs: Path | None = None
    max_pairs: int = Field(50_000_000, ge=1)

    @model_validator(mode="after")
    def _engine_options(self) -> BatchConfig:
        if self.engine == "local" and (self.address is not None or self.workers > 1):
            raise ValueError("engine local: runs one worker in this process (no address/workers)")
        return self


class Resolved(BaseModel):
    """The settings a worker needs, with the run's folders and sampling resolved."""

    model_config = ConfigDict(extra="forbid")

    adapter: str
    scorer: Literal["none", "preference", "run"]
    scorer_path: str | None
    num_inference_steps: int
    guidance_scale: float
    user_guidance: float
    candidates: int
    seed: int
    batch_size: int
    threads: int | None


def run_folders(run: Path, preference: Path | None) -> tuple[Path, Path, Path | None]:
    """``(stage-B run or adapter folder, adapter folder, preference folder or None)``.

    ``run`` may be the run folder (``RUN`` with ``icg/``), the stage-B run (``RUN/icg``) or an
    adapter folder. The preference model is ``preference`` if given, else ``RUN/preference``.
    """

    stage_b = run / "icg" if (run / "icg").is_dir() else run
    adapter = resolve_adapter_dir(stage_b)
    if not (adapter / ICG_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"run: no ICG adapter under {run} (expected icg_config.json)")
    if preference is None:
        for parent in (run, stage_b.parent):
            if (parent / PREFERENCE_RUN / PREFERENCE_CONFIG_FILE).is_file():
                preference = parent / PREFERENCE_RUN
                break
    elif not (preference / PREFERENCE_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"preference: {preference} holds no preference model")
    return stage_b, adapter, preference


def resolve(config: BatchConfig) -> tuple[Resolved, Path | None]:
    """The worker settings and the preference model used for users' picks (or None)."""
    stage_b, adapter, preference = run_folders(config.run, config.preference)
    recorded = {}
    if (stage_b / RUN_CONFIG_FILE).is_file():
        recorded = read_yaml_mapping(stage_b / RUN_CONFIG_FILE)
    sampling = {
        key: getattr(config, key)
        if getattr(config, key) is not None
        else recorded.get(key, default)
        for key, default in SAMPLING_DEFAULTS.items()
    }
    # the segment's best of K: the reward the run optimised (relevance and aesthetic keep the
    # item's content), at the segment's embedding; else the preference model alone
    scorer, scorer_path = "none", None
    if config.candidates > 1:
        if (stage_b / RUN_CONFIG_FILE).is_file():
            scorer, scorer_path = "run", str(stage_b)
        elif preference is not None:
            scorer, scorer_path = "preference", str(preference)
        else:
            raise FileNotFoundError(
                f"candidates={config.candidates}: needs a preference model or a stage-B run "
                f"folder (config.yaml) to pick with; {config.run} has neither"
            )
    pick = config.pick or ("preference" if preference is not None else "segment")
    if pick == "preference" and preference is None:
        raise FileNotFoundError("pick=preference: no preference model (pass --preference)")
    resolved = Resolved(
        adapter=str(adapter),
        scorer=scorer,
        scorer_path=scorer_path,
        candidates=config.candidates,
        seed=config.seed,
        batch_size=config.batch_size,
        threads=config.threads,
        **sampling,
    )
    return resolved, preference if pick == "preference" else None
