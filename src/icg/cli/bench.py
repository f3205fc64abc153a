"""`icg bench recipes`: the recipe matrix (`icg.matrix.run_matrix`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError


def _ints(text: str, option: str, count: int | None = None) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise typer.BadParameter(f"{option}: expected comma-separated integers, got {text!r}")\
            from err  # fmt: skip
    if not values or (count is not None and len(values) != count):
        what = f"{count} " if count else ""
        raise typer.BadParameter(f"{option}: expected {what}comma-separated integers, got {text!r}")
    return values


def recipes(
    recipe: Annotated[
        list[Path], typer.Option("--recipe", help="Recipe YAML (repeat: one per recipe).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Matrix folder (cells cached by hash).")],
    worlds: Annotated[
        str, typer.Option("--worlds", help="CoverWorld seeds, e.g. 3,11,5.")
    ] = "3,11,5",
    train_seeds: Annotated[
        int, typer.Option("--train-seeds", min=1, help="Training seeds 0..N-1 per world.")
    ] = 2,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="Recipe name compared against (default: first)."),
    ] = None,
    pairs: Annotated[
        int, typer.Option("--pairs", min=1, help="Evaluation pairs per world (at least).")
    ] = 256,
    candidates: Annotated[int, typer.Option("--candidates", min=2, help="K of best of K.")] = 8,
    world_size: Annotated[
        str | None,
        typer.Option("--world-size", help="items,users,impressions (default: the full demo's)."),
    ] = None,
    personal: Annotated[
        bool,
        typer.Option("--personal", help="Also measure each cell's personal gain (user swap)."),
    ] = False,
    engine: Annotated[
        str, typer.Option("--engine", help="local, process (a process per job) or ray.")
    ] = "local",
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Jobs at once (process, local Ray).")
    ] = 1,
    address: Annotated[
        str | None, typer.Option("--address", help="--engine ray: the cluster to join.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved cells and configs; run nothing.")
    ] = False,
) -> None:
    """Train and evaluate every (recipe, world, training seed) cell; write M/matrix.{json,md}."""
    # deferred: every command module is imported for `icg --help`; this one loads torch
    from icg.matrix import MatrixSpec, RecipeError, describe, load_recipe, plan_matrix, run_matrix

    if engine not in ("local", "process", "ray"):
        raise typer.BadParameter(f"--engine: expected local, process or ray, got {engine!r}")
    try:
        loaded = [load_recipe(path) for path in recipe]
        extra = {} if world_size is None else {"world_size": _ints(world_size, "--world-size", 3)}
        spec = MatrixSpec(
            recipes=loaded, baseline=baseline, worlds=_ints(worlds, "--worlds"),
            train_seeds=train_seeds, pairs=pairs, candidates=candidates, personal=personal,
            **extra,
        )  # fmt: skip
    except (RecipeError, ValidationError) as err:  # one line that names the file and field
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    if dry_run:
        typer.echo(json.dumps(describe(spec, plan_matrix(spec, out)), indent=2))
        return
    run_matrix(spec, out, engine=engine, workers=workers, address=address)
    typer.echo((out / "matrix.md").read_text())
    typer.echo(f"table: {out / 'matrix.md'} (every number: {out / 'matrix.json'})")
