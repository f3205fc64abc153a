"""`icg zoo ...`: thin wrappers over icg.zoo (coverworld-tiny)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from icg.zoo import evaluate_model, get, list_models, resolve, train_model

logger = logging.getLogger(__name__)


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _fmt_gates(info: dict) -> str:
    metrics, thresholds = info["metrics"], info["thresholds"]
    if not metrics:
        return "-"
    keys = list(thresholds) or [k for k in metrics if k != "n"]
    parts = []
    for k in keys:
        value = metrics.get(k)
        if isinstance(value, int | float):
            mark = ""
            if k in thresholds:
                mark = " ✓" if value >= thresholds[k] else " ✗"
            parts.append(f"{k}={value:.3f}{mark}")
    return ", ".join(parts)


def list_() -> None:
    """List the embedded models: format, parameters, size and gate results."""

    table = Table(title="coverworld-tiny")
    for col in ("name", "format", "parameters", "size", "gates"):
        table.add_column(col, justify="right" if col in ("parameters", "size") else "left")
    for info in list_models():
        if not info["present"]:
            table.add_row(info["name"], info["format"], "-", "-", "not trained")
            continue
        params = f"{info['parameters']:,}" if info["parameters"] else "-"
        table.add_row(
            info["name"], info["format"], params, _fmt_size(info["size_bytes"]), _fmt_gates(info)
        )
    Console().print(table)


def path(name: Annotated[str, typer.Argument(help="model name, e.g. clip or zoo:clip")]) -> None:
    """Print the folder of an embedded model (what `zoo:NAME` resolves to)."""

    name = name if name.startswith("zoo:") else f"zoo:{name}"
    try:
        typer.echo(resolve(name))
    except (KeyError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err).strip("'\""), param_hint="NAME") from None


def train(
    name: Annotated[
        str, typer.Argument(help="model name: clip, sd, flow, mllm, aesthetic or icg-adapter")
    ],
    out: Annotated[Path, typer.Option(help="folder to write the trained model into")],
    config: Annotated[
        Path | None, typer.Option(help="YAML overriding the recipe's configuration")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the checkpoint in --out")] = False,
    seed: Annotated[int, typer.Option(help="torch seed (data seeds are fixed by the recipe)")] = 0,
    dry_run: Annotated[
        bool, typer.Option(help="print the recipe's configuration and stop")
    ] = False,
) -> None:
    """Run the full recipe of an embedded model (CPU, seeded, resumable)."""

    if dry_run:
        try:
            resolved = get(name).load_config(config).model_dump(mode="json")
        except KeyError as err:
            raise typer.BadParameter(str(err).strip("'\""), param_hint="NAME") from None
        typer.echo(json.dumps({"name": name, "out": str(out), "config": resolved}, indent=2))
        return
    train_model(name, out, resume=resume, seed=seed, config=config)
    typer.echo(str(out))


def evaluate(
    name: Annotated[
        str, typer.Argument(help="model name: clip, sd, flow, mllm, aesthetic or icg-adapter")
    ],
    world: Annotated[
        Path | None, typer.Option(help="CoverWorld folder (fresh in-code renders when omitted)")
    ] = None,
    model_path: Annotated[
        Path | None, typer.Option("--path", help="model folder (default: the shipped one)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the gate metrics as JSON")] = False,
) -> None:
    """Measure the gate metrics of an embedded model."""

    try:
        result = evaluate_model(name, world=world, path=model_path)
    except (KeyError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err).strip("'\""), param_hint="NAME") from None
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    table = Table(title=f"zoo:{result['name']} gates ({'pass' if result['passed'] else 'FAIL'})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("gate", justify="right")
    for k, v in result["metrics"].items():
        gate = result["thresholds"].get(k)
        table.add_row(k, f"{v:.4f}", f"≥ {gate:g}" if gate is not None else "-")
    Console().print(table)
