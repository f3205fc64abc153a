"""`icg train ...`: thin Typer wrappers over the training recipes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

logger = logging.getLogger(__name__)


def align(
    data: Annotated[
        Path, typer.Option("--data", help="Platform data folder (items, users, impressions).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder, e.g. RUN/align.")],
    base: Annotated[
        str | None, typer.Option("--base", help="Base SD pipeline (default zoo:sd).")
    ] = None,
    mllm: Annotated[
        str | None, typer.Option("--mllm", help="Image-text-to-text MLLM (default zoo:mllm).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with AlignConfig fields.")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Override max_steps.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override seed.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config and exit.")
    ] = False,
) -> None:
    """Stage A: align the ICG adapter with the denoising loss on clicked covers."""
    from icg.training.align import load_config, run_align

    try:
        cfg = load_config(
            config, data=data, out=out, base=base, mllm=mllm, max_steps=max_steps, seed=seed
        )
    except (ValidationError, ValueError) as err:
        raise typer.BadParameter(str(err)) from err
    if dry_run:
        typer.echo(cfg.model_dump_json(indent=2))
        return
    result = run_align(cfg, resume=resume)
    typer.echo(
        f"adapter: {result.adapter_dir} ({result.steps} steps, last loss {result.losses[-1]:.5f})"
    )
