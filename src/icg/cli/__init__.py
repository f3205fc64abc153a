"""The `icg` command line: a table from subcommand to a function of the Python API.

Each entry names the module that holds a Typer command function; the function itself only
parses arguments and calls the library. No logic lives only here.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

import typer

from icg.cli.errors import clean_errors

# (group or "" for top level, command name, module, function)
COMMANDS: list[tuple[str, str, str, str]] = [
    ("world", "generate", "icg.cli.world", "generate"),
    ("world", "train-oracle", "icg.cli.world", "train_oracle"),
    ("world", "evaluate-oracle", "icg.cli.world", "evaluate_oracle"),
    ("world", "ab", "icg.cli.world", "ab"),
    ("data", "validate", "icg.cli.data", "validate"),
    ("zoo", "list", "icg.cli.zoo", "list_"),
    ("zoo", "path", "icg.cli.zoo", "path"),
    ("zoo", "train", "icg.cli.zoo", "train"),
    ("zoo", "evaluate", "icg.cli.zoo", "evaluate"),
    ("train", "align", "icg.cli.train", "align"),
    ("train", "preference", "icg.cli.train", "preference"),
    ("train", "reward", "icg.cli.train", "reward"),
    ("", "generate", "icg.cli.run", "generate"),
    ("", "evaluate", "icg.cli.run", "evaluate"),
    ("", "demo", "icg.cli.run", "demo"),
    ("", "serve", "icg.cli.serve", "serve"),
    ("", "batch", "icg.cli.batch", "batch"),
    ("bench", "recipes", "icg.cli.bench", "recipes"),
    ("ab", "report", "icg.cli.ab", "report"),
    ("", "loop", "icg.cli.loop", "loop"),
]

GROUP_HELP = {
    "world": "CoverWorld: a simulated cover platform with hidden ground truth.",
    "data": "Validate catalogs, users and click logs.",
    "zoo": "coverworld-tiny: the embedded default models.",
    "train": "Train the preference model and the ICG adapter (stage A align, stage B reward).",
    "bench": "Judge training recipes: the recipe matrix over worlds and training seeds.",
    "ab": "A/B analysis of impression logs with an arm column.",
}


def resolve_command(module_name: str, attr: str) -> Callable[..., None]:
    """The command function ``module_name.attr`` of a `COMMANDS` entry.

    Raises:
        ImportError: the module fails to import (a broken command is an error, never a command
            silently missing from ``icg --help``).
        AttributeError: the module has no such function.
    """
    module = importlib.import_module(module_name)
    func = getattr(module, attr, None)
    if not callable(func):
        raise AttributeError(f"COMMANDS: {module_name} has no command function {attr!r}")
    return func


def build_app() -> typer.Typer:
    """The Typer app of every `COMMANDS` entry, grouped as ``icg GROUP NAME``."""
    app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
    groups: dict[str, typer.Typer] = {}
    for group, name, module_name, attr in COMMANDS:
        func = clean_errors(resolve_command(module_name, attr))
        if not group:
            app.command(name)(func)
            continue
        if group not in groups:
            groups[group] = typer.Typer(no_args_is_help=True, help=GROUP_HELP.get(group))
            app.add_typer(groups[group], name=group)
        groups[group].command(name)(func)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_app()()
