"""Running the app under uvicorn, with a graceful shutdown that finishes in-flight requests."""

from __future__ import annotations

import logging
import socket

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from icg.serve.app import create_app
from icg.serve.auth import is_loopback
from icg.serve.backend import CoverBackend, PipelineBackend
from icg.serve.config import ServeConfig
from icg.serve.protocol import guarded_protocol
from icg.serve.service import CoverService

logger = logging.getLogger(__name__)


def pipeline_backend(config: ServeConfig) -> PipelineBackend:
    """The real backend of a config (its run and data folders).

    Raises:
        ValueError: ``run`` or ``data`` is missing or not a folder.
    """
    for name in ("run", "data"):
        value = getattr(config, name)
        if value is None or not value.is_dir():
            raise ValueError(f"{name}={value}: expected an existing folder")
    return PipelineBackend(config.run, config.data, config.feature_cache_size)


def check_bind(config: ServeConfig) -> None:
    """The loopback rule, checked again where a server starts, whatever built the config.

    Raises:
        ValueError: a non-loopback host without an API key.
    """
    if not is_loopback(config.host) and config.api_key is None:
        raise ValueError(f"host={config.host!r}: refusing to listen beyond loopback without a key")


RESPONSE_FLUSH_S = 2.0
"""After the grace period every request has its answer; this is how long uvicorn then waits for
the answers to be written before it closes the connections."""


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose shutdown has one grace period: it stops accepting, drains the
    service (running calls finish within ``shutdown_grace_s``; every other request gets a JSON
    503 with ``Retry-After``), then lets uvicorn write those answers and close."""

    def __init__(self, config: uvicorn.Config, service: CoverService) -> None:
        super().__init__(config)
        self.service = service

    async def shutdown(self, sockets=None) -> None:  # noqa: ANN001 - uvicorn's signature
        for server in self.servers:  # stop accepting first
            server.close()
        await self.service.drain()
        await super().shutdown(sockets)


def uvicorn_server(
    config: ServeConfig, backend: CoverBackend | None = None, log_level: str = "info"
) -> uvicorn.Server:
    """A uvicorn server of the app with the connection guards of `icg.serve.protocol` (header
    timeout, connection cap); SIGINT/SIGTERM stop accepting, finish what is in flight within
    ``shutdown_grace_s`` and answer the rest 503, then stop.

    Raises:
        ValueError: a non-loopback host without an API key (see `check_bind`).
    """
    check_bind(config)
    app = create_app(config, backend if backend is not None else pipeline_backend(config))
    protocol = guarded_protocol(AutoHTTPProtocol, config.header_timeout_s, config.max_connections)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        http=protocol,
        timeout_graceful_shutdown=RESPONSE_FLUSH_S,
        access_log=False,
    )
    return GracefulServer(uv_config, app.state.service)


def run_server(config: ServeConfig, backend: CoverBackend | None = None) -> None:
    """Serve until interrupted (blocking)."""
    server = uvicorn_server(config, backend)
    logger.info("icg serve on http://%s:%d (docs at /docs)", config.host, config.port)
    server.run()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for tests and benchmarks)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
