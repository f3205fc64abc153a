"""Top-level commands: `icg demo` (and, as they land, `icg generate` / `icg evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from icg.cli.world import print_summary


def demo(
    out: Annotated[Path, typer.Option(help="folder for the demo world and its outputs")] = Path(
        "demo-out"
    ),
    quick: Annotated[bool, typer.Option(help="a smaller world")] = False,
    seed: Annotated[int, typer.Option(help="world seed")] = 3,
) -> None:
    """Run the main job on the embedded default: generate a CoverWorld, validate it, summarise it."""
    from icg.data import load_dataset
    from icg.world.config import WorldConfig
    from icg.world.generate import generate_world
    from icg.world.summary import platform_summary

    size = dict(n_items=100, n_users=50, n_impressions=10_000) if quick else {}
    cfg = WorldConfig(seed=seed, **size)
    world = generate_world(out / "world", cfg, overwrite=True)
    data = load_dataset(world, rejects_dir=out / "rejects")
    if not data.report.usable:
        raise typer.Exit(f"the generated world is not usable: {data.report.problems[:3]}")
    print_summary(
        platform_summary(world),
        f"CoverWorld at {world} (validated: {len(data.impressions)} impressions kept)",
    )
