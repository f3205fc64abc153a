"""`icg serve`: personalized covers over HTTP (see `icg.serve`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

if TYPE_CHECKING:
    # deferred: `icg --help` imports every command module; this loads torch and models
    from icg.serve import ServeConfig


def serve(
    run: Annotated[Path, typer.Option("--run", help="Stage-B run folder (RUN/icg).")],
    data: Annotated[Path, typer.Option("--data", help="Platform data folder (users, items).")],
    host: Annotated[
        str | None,
        typer.Option(
            "--host", help="Bind address (default 127.0.0.1); beyond loopback needs a key."
        ),
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Default 8000.")] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option("--api-key-file", help="File holding the bearer token (else ICG_API_KEY)."),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option("--max-batch", help="Rows per UNet call.")
    ] = None,
    batch_wait_ms: Annotated[
        float | None, typer.Option("--batch-wait-ms", help="Longest wait to fill a batch.")
    ] = None,
    queue_size: Annotated[
        int | None, typer.Option("--queue-size", help="Waiting requests before 429.")
    ] = None,
    deadline: Annotated[
        float | None, typer.Option("--deadline", help="Per-request deadline in seconds.")
    ] = None,
    max_candidates: Annotated[int | None, typer.Option("--max-candidates")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Default denoising steps.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with ServeConfig fields.")
    ] = None,
    use_ray: Annotated[
        bool, typer.Option("--ray", help="Serve as a Ray Serve deployment (icg[ray]).")
    ] = False,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="With --ray: replicas, one pipeline each.")
    ] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config and exit.")
    ] = False,
) -> None:
    """Serve personalized covers over HTTP: POST /v1/covers, /healthz, /readyz, /metrics, /docs."""
    # deferred: `icg --help` imports every command module; this loads torch and models
    from icg.config import load_config
    from icg.serve import ServeConfig, run_server
    from icg.serve.auth import load_api_key

    try:
        cfg = load_config(
            ServeConfig, config, run=run, data=data, host=host, port=port,
            api_key=load_api_key(api_key_file), max_batch=max_batch, batch_wait_ms=batch_wait_ms,
            queue_size=queue_size, deadline_s=deadline, max_candidates=max_candidates,
            max_steps=max_steps, default_steps=steps,
        )  # fmt: skip
    except ValidationError as err:  # never echo the values: one may be the API key
        from icg.serve.errors import validation_message

        raise typer.BadParameter(validation_message(err.errors(include_input=False))) from err
    except (ValueError, FileNotFoundError) as err:
        raise typer.BadParameter(str(err)) from err
    if replicas != 1 and not use_ray:
        raise typer.BadParameter(f"--replicas {replicas}: expected --ray as well")
    if dry_run:
        typer.echo(cfg.model_dump_json(indent=2))
        return
    try:
        if use_ray:
            _run_on_ray(cfg, replicas)
        else:
            run_server(cfg)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err


def _run_on_ray(cfg: ServeConfig, replicas: int) -> None:
    """`icg.serve.ray_app.run_ray_server`, with a message where the ray extra is missing."""
    try:
        # deferred: `icg --help` imports every command module; this loads torch and models
        from icg.serve.ray_app import run_ray_server as run
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("ray"):
            raise
        raise typer.BadParameter("--ray needs Ray Serve: pip install 'icg[ray]'") from err
    run(cfg, replicas)
