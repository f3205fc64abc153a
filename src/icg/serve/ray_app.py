"""`icg serve --ray`: the same FastAPI app as a Ray Serve deployment, one backend per replica.

    app = cover_application(ServeConfig(run=RUN, data=DATA), replicas=2)
    serve.run(app, name="icg", route_prefix="/")

Each replica builds ``create_app(config, backend)`` itself (Ray Serve's late-bound ingress,
``serve.ingress()`` with ``__serve_build_asgi_app__``), so routes, auth, caps, the queue, the
deadline and the JSON errors are those of `icg serve`; Ray adds the HTTP proxy on
``config.host:config.port`` and spreads requests over the replicas. A replica loads its backend
(its own pipeline) before Ray routes it a request, and names itself in an ``X-ICG-Replica``
header, since its ``/metrics``, queue and caches are its own. Needs the ``ray`` extra
(``pip install icg[ray]``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

import ray
from fastapi import FastAPI, Request
from ray import serve
from ray.serve import Application

from icg.serve.app import create_app
from icg.serve.backend import CoverBackend
from icg.serve.config import ServeConfig
from icg.serve.server import check_bind, pipeline_backend

logger = logging.getLogger(__name__)

APP_NAME = "icg"
REPLICA_HEADER = "X-ICG-Replica"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@serve.ingress()
class CoverDeployment:
    """One replica of the cover service.

    Args:
        config: the validated settings (every replica gets the same).
        make_backend: builds this replica's backend (default: the run's `PipelineBackend`);
            a picklable callable, since Ray ships it to the replica's process.
    """

    async def __init__(
        self, config: ServeConfig, make_backend: Callable[[], CoverBackend] | None = None
    ) -> None:
        self.config = config
        self.backend = make_backend() if make_backend is not None else pipeline_backend(config)
        await asyncio.to_thread(self.backend.load)  # Ray routes nothing here before this returns
        self.replica = serve.get_replica_context().replica_id.unique_id
        logger.info("replica %s loaded", self.replica)

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self.config, self.backend)

        @app.middleware("http")
        async def name_replica(request: Request, call_next):
            response = await call_next(request)
            response.headers[REPLICA_HEADER] = self.replica
            return response

        return app


def cover_application(
    config: ServeConfig,
    replicas: int = 1,
    make_backend: Callable[[], CoverBackend] | None = None,
    num_cpus: float = 1.0,
) -> Application:
    """The cover service as a Ray Serve application of ``replicas`` `CoverDeployment` replicas.

    A replica takes up to ``queue_size + 2 * max_batch`` requests at once (its line, its
    running call, and as many again for ops endpoints and requests on their way to the line or
    to a 429), so the app's own queue answers 429 before Ray's limit is reached; past it Ray
    queues at most ``queue_size`` more, then answers 503 itself. Stopping a replica waits
    ``shutdown_grace_s`` for its requests.

    Args:
        config: validated settings; ``host`` and ``port`` are where Ray's proxy listens.
        replicas: how many replicas, each with its own backend.
        make_backend: builds a replica's backend (default: `pipeline_backend` of ``config``).
        num_cpus: CPUs Ray reserves per replica.

    Raises:
        ValueError: ``replicas`` below 1.
    """
    if replicas < 1:
        raise ValueError(f"replicas={replicas}: expected at least 1")
    deployment = serve.deployment(
        CoverDeployment,
        num_replicas=replicas,
        max_ongoing_requests=config.queue_size + 2 * config.max_batch,
        max_queued_requests=config.queue_size,
        graceful_shutdown_timeout_s=config.shutdown_grace_s,
        ray_actor_options={"num_cpus": num_cpus},
    )
    return deployment.bind(config, make_backend)


def start_ray_serve(
    config: ServeConfig,
    replicas: int = 1,
    make_backend: Callable[[], CoverBackend] | None = None,
    num_cpus: float = 1.0,
) -> None:
    """Deploy the cover service on the running Ray instance and wait until every replica is up.

    Raises:
        ValueError: a non-loopback host without an API key; ``replicas`` below 1; with the
            default backend, ``run`` or ``data`` not a folder (checked here, before any replica
            starts).
    """
    check_bind(config)
    if make_backend is None:
        pipeline_backend(config)  # the folder checks, here rather than in every replica
    application = cover_application(config, replicas, make_backend, num_cpus)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(application, name=APP_NAME, route_prefix="/")
    logger.info(
        "icg serve on Ray: %d replicas at http://%s:%d (docs at /docs)",
        replicas, config.host, config.port,
    )  # fmt: skip


def stop_ray_serve() -> None:
    """Drain and stop: the app is deleted first (each replica finishes its requests, up to
    ``shutdown_grace_s``, while the proxy still delivers their responses), then Serve."""
    serve.delete(APP_NAME)
    serve.shutdown()


def run_ray_server(config: ServeConfig, replicas: int = 1) -> None:
    """Serve on Ray (a local instance, or the cluster ``RAY_ADDRESS`` names) until SIGINT or
    SIGTERM, then drain and stop (blocking)."""
    started = not ray.is_initialized()
    if started:
        ray.init()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in SIGNALS}
    try:
        start_ray_serve(config, replicas)
        while not stop.wait(0.5):
            pass
        logger.info("shutting down: finishing in-flight requests")
        stop_ray_serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started:
            ray.shutdown()
