"""`icg batch`: covers for every user of a platform, drawn per (segment, item)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def batch(
    run: Annotated[
        Path, typer.Option("--run", help="Run folder (icg/, preference/), RUN/icg or adapter.")
    ],
    data: Annotated[
        Path, typer.Option("--data", help="Data folder: items and users (files or parquet dirs).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output: covers/, manifest/, assignments.parquet.")
    ],
    segments: Annotated[
        int | None,
        typer.Option("--segments", min=1, help="User segments (k-means on embeddings); 16."),
    ] = None,
    segment_by: Annotated[
        str | None,
        typer.Option(
            "--segment-by", help="kmeans (default) | column (the users' 'segment') | user."
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option("--engine", help="ray (default: Ray Data actor pool) | local (one process)."),
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Join this Ray cluster (default: local).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Ray actors, one pipeline each; 1.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, help="torch threads per worker (default: CPUs/workers)."),
    ] = None,
    num_cpus: Annotated[
        int | None, typer.Option("--num-cpus", help="CPUs of the local Ray instance.")
    ] = None,
    candidates: Annotated[
        int | None,
        typer.Option("--candidates", min=1, help="Draws per (segment, item), best kept; 1."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", help="Denoising steps (default: the run's).")
    ] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", help="CFG scale (default: the run's).")
    ] = None,
    user_guidance: Annotated[
        float | None, typer.Option("--user-guidance", help="User guidance w_u (default: run's).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Base seed; 0.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Images per UNet call; 16.")
    ] = None,
    partition_size: Annotated[
        int | None,
        typer.Option("--partition-size", help="(segment, item) units per resumable part."),
    ] = None,
    pick: Annotated[
        str | None,
        typer.Option(
            "--pick",
            help="preference: the user's preference model picks among the item's segment "
            "covers (default when RUN/preference exists) | segment: the segment's cover.",
        ),
    ] = None,
    pick_segments: Annotated[
        int | None,
        typer.Option("--pick-segments", help="Choose among the nearest M segments' covers."),
    ] = None,
    preference: Annotated[
        Path | None, typer.Option("--preference", help="Preference model folder.")
    ] = None,
    pairs: Annotated[
        Path | None,
        typer.Option("--pairs", help="Parquet of wanted (user_id, item_id); default all × all."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with BatchConfig fields.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config and exit.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace what a non-empty --out holds.")
    ] = False,
) -> None:
    """Draw covers per (user segment, item) and assign one to every (user, item). Resumable.

    Options left out take their value from --config, else the `BatchConfig` default.
    """
    # deferred: `icg --help` imports every command module; this loads torch and models
    from icg.batch import BatchConfig, run_batch
    from icg.config import load_config

    try:
        cfg = load_config(
            BatchConfig, config, run=run, data=data, out=out, segments=segments,
            segment_by=segment_by, engine=engine, address=address, workers=workers, threads=threads,
            num_cpus=num_cpus, candidates=candidates, num_inference_steps=steps,
            guidance_scale=guidance, user_guidance=user_guidance, seed=seed,
            batch_size=batch_size, partition_size=partition_size, pick=pick,
            pick_segments=pick_segments, preference=preference, pairs=pairs,
        )  # fmt: skip
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise typer.BadParameter(str(err)) from err
    if dry_run:
        typer.echo(cfg.model_dump_json(indent=2))
        return
    try:
        result = run_batch(cfg, overwrite=overwrite)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from err
    typer.echo(
        f"{result.units} (segment, item) covers for {result.segments} segments "
        f"({result.images} drawn now, {result.skipped}/{result.partitions} partitions were "
        f"done) in {result.seconds:.1f} s; {len(result.assignments)} assignments: "
        f"{out / 'assignments.parquet'}"
    )
