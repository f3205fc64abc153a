"""Expected failures end a command with one clear line on stderr and exit code 1, never a
traceback: bad data, broken artifacts, unsafe paths, occupied output folders, mismatched runs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types whose message is the whole story (each names file and problem)."""
    # deferred: `icg --help` loads this module; icg.runs and icg.artifacts load torch
    from icg.artifacts import ArtifactError
    from icg.data.errors import DataError, ImageLoadError
    from icg.io import DiskFullError
    from icg.runs import RunConfigError
    from icg.safety import OutputExistsError, UnsafePathError

    return (ArtifactError, DataError, DiskFullError, ImageLoadError, OutputExistsError,
            RunConfigError, UnsafePathError)  # fmt: skip


def clean_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command function: a `user_errors` exception prints ``error: <message>`` to stderr
    and exits 1 (Typer reads the signature through ``functools.wraps``)."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except user_errors() as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from err
        except OSError as err:  # a full disk anywhere: one line, not a traceback
            from icg.io import disk_full_error, is_disk_full

            if not is_disk_full(err):
                raise
            typer.echo(f"error: {disk_full_error(err, 'this command')}", err=True)
            raise typer.Exit(1) from err

    return command
