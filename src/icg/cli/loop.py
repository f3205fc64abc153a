"""`icg loop`: a thin wrapper over icg.loop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def loop(
    world: Annotated[Path, typer.Option(help="the CoverWorld the experiments run on")],
    run: Annotated[Path, typer.Option(help="run folder with align/ and the first ICG run")],
    out: Annotated[Path, typer.Option(help="the loop's folder (rerun to resume)")],
    rounds: Annotated[
        int | None, typer.Option(help="rounds of covers -> A/B -> retrain [3]")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="RUN/<start> draws round 1's covers [icg]")
    ] = None,
    covers: Annotated[
        str | None,
        typer.Option(
            help="batch: per (segment, item), every user; pairs: per (user, item) [batch]"
        ),
    ] = None,
    segments: Annotated[int | None, typer.Option(help="batch: k-means user segments [4]")] = None,
    users: Annotated[int | None, typer.Option(help="pairs: users drawn for [8]")] = None,
    items: Annotated[int | None, typer.Option(help="the first N items drawn for [12]")] = None,
    impressions: Annotated[
        int | None, typer.Option(help="impressions per round's A/B [100000]")
    ] = None,
    reward_steps: Annotated[int | None, typer.Option(help="stage-B steps per round [60]")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of draws and experiments [0]")] = None,
    reward_seed: Annotated[
        int | None, typer.Option(help="stage B's seed [recorded in RUN/<start>]")
    ] = None,
    preference_seed: Annotated[
        int | None, typer.Option(help="the preference retrain's seed [RUN/preference's]")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML LoopConfig (options override)")] = None,
    dry_run: Annotated[bool, typer.Option(help="print the resolved config and stop")] = False,
) -> None:
    """Closed loop: generate -> simulated A/B -> retrain the preference model on all logs ->
    stage B -> generate again, for --rounds rounds; one report in OUT/loop.json."""
    # deferred: every command module is imported for `icg --help`; this one loads torch
    from icg.config import load_config
    from icg.loop import LoopConfig, run_loop

    cfg = load_config(
        LoopConfig, config, world=world, run=run, out=out, rounds=rounds, start=start,
        covers=covers, segments=segments, users=users, items=items, impressions=impressions,
        reward_steps=reward_steps, seed=seed, reward_seed=reward_seed,
        preference_seed=preference_seed,
    )  # fmt: skip
    if dry_run:
        Console().print(cfg.model_dump(mode="json"))
        return
    summary = run_loop(cfg)
    table = Table(title=f"icg loop: {out}/loop.json")
    for col in ("round", "online lift [95%]", "p", "offline lift", "impressions (total)"):
        table.add_column(col)
    for r in summary["rounds"]:
        online = (f"{r['online_lift']:+.2%} [{r['online_low']:+.2%}, {r['online_high']:+.2%}]"
                  if r["online_lift"] is not None else "n/a")  # fmt: skip
        table.add_row(str(r["round"]), online, f"{r['p_value']:.3g}" if r["p_value"] else "",
                      f"{r['offline_lift']:+.2%}", str(r["impressions_total"]))  # fmt: skip
    Console().print(table)
