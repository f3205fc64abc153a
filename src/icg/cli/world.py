"""`icg world ...`: thin wrappers over icg.world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def generate(
    out: Annotated[Path, typer.Option(help="folder to write the world into")],
    items: Annotated[int | None, typer.Option(help="number of items")] = None,
    users: Annotated[int | None, typer.Option(help="number of users")] = None,
    impressions: Annotated[int | None, typer.Option(help="number of impressions")] = None,
    seed: Annotated[int | None, typer.Option(help="world seed")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML WorldConfig")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
    chunk_impressions: Annotated[
        int | None,
        typer.Option(help="impressions simulated at once (bounds memory; same world for any)"),
    ] = None,
) -> None:
    """Generate a CoverWorld: platform data, covers and the hidden truth/."""
    # deferred: `icg --help` imports every command module; this loads torch and models
    from icg.config import load_config
    from icg.world.config import WorldConfig
    from icg.world.generate import generate_world
    from icg.world.summary import platform_summary

    cfg = load_config(WorldConfig, config)
    overrides = {"n_items": items, "n_users": users, "n_impressions": impressions, "seed": seed}
    cfg = cfg.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    cfg = WorldConfig(**cfg.model_dump())  # validate the overrides
    generate_world(out, cfg, overwrite=overwrite, chunk_impressions=chunk_impressions)
    print_summary(platform_summary(out), f"CoverWorld at {out}")


def print_summary(summary: dict, title: str) -> None:
    """A quantity/value table on the terminal (floats to 4 decimals)."""
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(table)


def train_oracle(
    epochs: Annotated[int, typer.Option(help="training epochs")] = 5,
) -> None:
    """Retrain the truth oracle on ORACLE-seed renders (ships with the package)."""
    # deferred: `icg --help` imports every command module; this loads torch and models
    from icg.world.oracle import train_oracle as _train

    acc = _train(epochs=epochs)
    Console().print(acc)


def evaluate_oracle(
    n: Annotated[int, typer.Option(help="fresh renders per degradation")] = 2000,
    vae: Annotated[
        str | None,
        typer.Option(
            help="also read VAE round trips through this AutoencoderKL folder "
            "(default: the shipped coverworld-tiny sd's VAE; 'none' to skip)"
        ),
    ] = None,
    grid: Annotated[
        Path | None, typer.Option(help="write a PNG of the misread covers here")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """How well the truth reads degraded covers: motif, palette and style accuracy per degradation."""
    # deferred: `icg --help` imports every command module; this loads torch and models
    from icg.world.degrade import vae_roundtrip
    from icg.world.robustness import degradation_report

    extra = {}
    if (vae or "").lower() != "none":
        if vae is None:
            # deferred: `icg --help` imports every command module; this loads torch and models
            from icg.zoo.registry import get

            vae = str(get("sd").path / "vae")
        extra["vae"] = vae_roundtrip(Path(vae))
    report = degradation_report(n=n, extra=extra, grid=grid)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"truth accuracy on {n} fresh renders per degradation")
    columns = ["motif", "palette", "style"] + [
        k for k in next(iter(report.values())) if k.startswith("style_")
    ]
    table.add_column("degradation")
    for c in columns:
        table.add_column(c.removeprefix("style_"), justify="right")
    for name, row in report.items():
        table.add_row(name, *(f"{row[c]:.3f}" for c in columns))
    Console().print(table)


def ab(
    data: Annotated[Path, typer.Option(help="the CoverWorld to run the experiment on")],
    arm: Annotated[
        list[str],
        typer.Option(
            help="NAME=reference, NAME=MANIFEST or NAME=BATCH_OUT (an icg batch output; "
            "repeatable; the first is control)"
        ),
    ],
    out: Annotated[Path, typer.Option(help="the new platform folder (impressions carry 'arm')")],
    impressions: Annotated[int, typer.Option(help="impressions to simulate")] = 100_000,
    seed: Annotated[int, typer.Option(help="experiment seed (and randomisation salt)")] = 0,
    chunk_impressions: Annotated[
        int, typer.Option(help="impressions simulated at once (same log for any)")
    ] = 100_000,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """Simulate an online A/B test of cover arms on a world's traffic (then: icg ab report)."""
    # deferred: every command module is imported for `icg --help`; this one loads torch
    from icg.world.ab import simulate_ab

    arms = {}
    for spec in arm:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise typer.BadParameter(
                f"--arm: expected NAME=reference, NAME=MANIFEST or NAME=BATCH_OUT, got {spec!r}"
            )
        arms[name] = value
    summary = simulate_ab(data, arms, impressions, seed, out, chunk_impressions=chunk_impressions,
                          overwrite=overwrite)  # fmt: skip
    print_summary({f"users in {a}": n for a, n in summary["users"].items()}
                  | {"impressions": summary["impressions"], "pairs": summary["pairs"]},
                  f"A/B log at {out}: icg ab report --data {out} --control {next(iter(arms))}")  # fmt: skip
