"""`run_batch`: plan → draw the unfinished partitions → manifest → assignments.

    result = run_batch(BatchConfig(run="RUN", data="W", out="OUT", segments=16))

OUT/plan/ (segments, users' segments, units, settings.json), OUT/covers/ (PNGs marked as
AI-generated), OUT/manifest/ (one part per partition), OUT/assignments.parquet, OUT/summary.json.
A second call with the same settings skips the finished partitions; other settings are refused
(a new OUT is needed), so a resumed folder never mixes covers of two configurations.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from icg.batch.assign import (
    PreferencePicker,
    preference_picks,
    segment_covers,
    write_assignments,
)
from icg.batch.config import BatchConfig, resolve
from icg.batch.engines import run_local, run_ray
from icg.batch.manifest import finished_partitions, part_path, read_manifest
from icg.batch.output import damaged_partitions, prepare_batch_output
from icg.batch.plan import (
    PLAN_DIR,
    Segments,
    cover_path,
    load_plan,
    save_plan,
    segment,
    unit_table,
    user_choices,
    work_units,
)
from icg.batch.tables import read_catalog
from icg.io import atomic_path, atomic_write_json, disk_full_error, is_disk_full
from icg.layout import (
    ASSIGNMENTS_FILE,
    PLAN_PAIRS_FILE,
    PLAN_SETTINGS_FILE,
    REJECTS_DIR,
    SUMMARY_FILE,
)
from icg.safety import output_path

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What a batch run did.

    Args:
        out: the output folder.
        segments: segments drawn for.
        units: (segment, item) units in the plan.
        partitions: partitions in the plan; ``skipped`` of them were finished before this call.
        images: covers drawn by this call.
        seconds: wall time of the drawing (with Ray start-up and model loading).
        busy_seconds: the workers' time inside partitions, summed over workers.
        manifest: one row per unit (`icg.batch.manifest.MANIFEST_SCHEMA` + partition).
        assignments: one row per (user, item) (`icg.batch.assign.ASSIGNMENT_COLUMNS`).
    """

    out: Path
    segments: int
    units: int
    partitions: int
    skipped: int
    images: int
    seconds: float
    busy_seconds: float
    manifest: pd.DataFrame
    assignments: pd.DataFrame


def read_pairs_file(path: Path) -> pd.DataFrame:
    """(user, item) pairs from a parquet file with user_id and item_id columns."""
    frame = pd.read_parquet(path)
    missing = {"user_id", "item_id"} - set(frame.columns)
    if missing:
        raise ValueError(f"pairs: {path} lacks column(s) {sorted(missing)}")
    return frame[["user_id", "item_id"]].astype(str).drop_duplicates().reset_index(drop=True)


def _check_settings(out: Path, fingerprint: dict) -> bool:
    """Whether OUT holds a plan; raises if it was made with other settings."""
    file = out / PLAN_DIR / PLAN_SETTINGS_FILE
    if not file.is_file():
        return False
    recorded = json.loads(file.read_text(encoding="utf-8"))
    changed = {k: (recorded.get(k), v) for k, v in fingerprint.items() if recorded.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"out: {out} was written with other settings ({detail}); use a new --out")
    return True


def plan_batch(config: BatchConfig, pick: bool) -> None:
    """Segment the users, find the units the pairs need and write OUT/plan/ (atomically)."""
    items, users = read_catalog(config.data, config.out / REJECTS_DIR)
    segments = segment(users, config.segment_by, config.segments, config.seed)
    pairs = _pairs(config, items, segments.users)
    choices = user_choices(segments, users, config.pick_segments if pick else 1)
    units = work_units(zip(pairs["user_id"], pairs["item_id"], strict=True), choices)
    frame = unit_table(units, segments.table, items, config.partition_size, config.seed)
    save_plan(config.out, segments, frame)
    if config.pairs is not None:
        with atomic_path(output_path(config.out, PLAN_DIR, PLAN_PAIRS_FILE)) as tmp:
            pairs.to_parquet(tmp, index=False)


def _pairs(config: BatchConfig, items: pd.DataFrame, users: pd.DataFrame) -> pd.DataFrame:
    if config.pairs is not None:
        pairs = read_pairs_file(config.pairs)
        for column, known in (("user_id", users["user_id"]), ("item_id", items["item_id"])):
            unknown = set(pairs[column]) - set(known.astype(str))
            if unknown:
                raise KeyError(f"pairs: unknown {column} {sorted(unknown)[:3]}")
        return pairs
    n = len(users) * len(items)
    if n > config.max_pairs:
        raise ValueError(
            f"every user × every item is {n:,} (user, item) rows, over max_pairs "
            f"{config.max_pairs:,}; pass --pairs (e.g. each user's recommended items)"
        )
    return pd.DataFrame(
        {
            "user_id": np.repeat(users["user_id"].to_numpy(), len(items)),
            "item_id": np.tile(items["item_id"].astype(str).to_numpy(), len(users)),
        }
    )


def run_batch(config: BatchConfig, pipe=None, overwrite: bool = False) -> BatchResult:
    """Draw covers per (segment, item) for every wanted (user, item) pair and assign them.

    Args:
        config: the settings (see `BatchConfig`).
        pipe: an `ICGPipeline` for the local engine instead of loading the run's adapter.
        overwrite: replace a non-empty ``out`` (`icg.batch.output.prepare_batch_output`).

    Raises:
        OutputExistsError, UnsafePathError: ``out`` is not batch's to write (nothing written).
        DiskFullError: the disk filled up; covers of unfinished partitions were removed and a
            second call resumes to the same bytes.
    """
    settings, preference = resolve(config)
    out = config.out
    # everything that changes which covers are drawn or how (not batch size, engine, workers)
    fingerprint = {
        **settings.model_dump(exclude={"batch_size", "threads"}),
        **config.model_dump(include={"segments", "segment_by", "partition_size", "pick_segments"}),
        "data": str(config.data.resolve()),
        "pairs": str(config.pairs.resolve()) if config.pairs else None,
        "pick": preference is not None,
    }
    resume = prepare_batch_output(
        out, inputs=[config.data, config.run], overwrite=overwrite,
        same_settings=lambda folder: _check_settings(folder, fingerprint),
    )  # fmt: skip
    if not resume:
        plan_batch(config, pick=preference is not None)
        atomic_write_json(output_path(out, PLAN_DIR, PLAN_SETTINGS_FILE), fingerprint)
    segments, units = load_plan(out)
    partitions = sorted(int(p) for p in units["partition"].unique())

    def covers_of(partition: int) -> list[str]:
        rows = units[units["partition"] == partition]
        return [
            cover_path(s, i, k)
            for s, i in zip(rows["segment"], rows["item_id"], strict=True)
            for k in range(settings.candidates)
        ]

    done = finished_partitions(out)
    for partition in damaged_partitions(out, read_manifest(out), covers_of) if done else ():
        part_path(out, partition).unlink()  # drawn again: damaged covers were removed
        done.discard(partition)
    todo = [p for p in partitions if p not in done]
    logger.info(
        "%d segments, %d units in %d partitions (%d finished): %d candidate(s) each",
        len(segments.table),
        len(units),
        len(partitions),
        len(partitions) - len(todo),
        settings.candidates,
    )
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn()) as progress:
        task = progress.add_task("(segment, item) covers", total=len(units))
        progress.advance(task, int(units["partition"].isin(done).sum()))

        busy = [0.0]

        def on_done(n_units: int, images: int, seconds: float) -> None:
            progress.advance(task, n_units)
            busy[0] += seconds

        kwargs = settings.model_dump()
        try:
            if config.engine == "local":
                images = run_local(out, kwargs, todo, on_done, pipe=pipe)
            else:
                images = run_ray(
                    out, kwargs, todo, on_done,
                    workers=config.workers, address=config.address, num_cpus=config.num_cpus,
                )  # fmt: skip
        except OSError as err:
            if not is_disk_full(err):
                raise
            unfinished = [p for p in todo if not part_path(out, p).is_file()]
            removed = [out / rel for p in unfinished for rel in covers_of(p)]
            removed = [path for path in removed if path.is_file()]
            for path in removed:
                path.unlink()
            raise disk_full_error(err, "icg batch", len(removed)) from err
    seconds = time.perf_counter() - start
    manifest = read_manifest(out)
    if len(manifest) != len(units) or not manifest["unit"].is_unique:
        raise RuntimeError(f"manifest: {len(manifest)} rows for {len(units)} units in {out}")
    assignments = assign(config, out, segments, manifest, settings.candidates, preference)
    atomic_write_json(
        output_path(out, SUMMARY_FILE),
        {
            "segments": len(segments.table),
            "units": len(units),
            "candidates": settings.candidates,
            "images_drawn_this_call": images,
            "seconds_this_call": seconds,
            "busy_seconds_this_call": busy[0],
            "assignments": len(assignments),
            "pick": "preference" if preference is not None else "segment",
        },
    )
    return BatchResult(
        out, len(segments.table), len(units), len(partitions), len(partitions) - len(todo),
        images, seconds, busy[0], manifest, assignments,
    )  # fmt: skip


def assign(
    config: BatchConfig,
    out: Path,
    segments: Segments,
    manifest: pd.DataFrame,
    candidates: int,
    preference: Path | None,
) -> pd.DataFrame:
    """Build and write OUT/assignments.parquet (see `icg.batch.assign`): every wanted (user,
    item) pair, its segment's cover, or the preference model's pick when ``preference``."""
    if config.pairs is not None:
        pairs = pd.read_parquet(out / PLAN_DIR / PLAN_PAIRS_FILE)
    else:
        items = manifest["item_id"].drop_duplicates().sort_values()
        users = segments.users["user_id"]
        pairs = pd.DataFrame(
            {
                "user_id": np.repeat(users.to_numpy(), len(items)),
                "item_id": np.tile(items.to_numpy(), len(users)),
            }
        )
    own = segments.users.set_index("user_id")["segment"]
    if preference is None:
        frame = segment_covers(pairs, own, manifest)
    else:
        _, users = read_catalog(config.data, out / REJECTS_DIR, check_images=False)
        users = users.set_index("user_id").loc[own.index].reset_index()
        users["segment"] = own.to_numpy()
        choices = user_choices(segments, users, config.pick_segments)
        picker = PreferencePicker(preference, out)
        frame = preference_picks(pairs, users, choices, manifest, candidates, picker)
    write_assignments(frame, output_path(out, ASSIGNMENTS_FILE))
    return frame
