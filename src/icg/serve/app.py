"""The FastAPI app: ``POST /v1/covers``, ``/healthz``, ``/readyz``, ``/metrics``, ``/docs``.

    app = create_app(ServeConfig(run=RUN, data=DATA), PipelineBackend(RUN, DATA))

The app only frames HTTP (auth, body limit, content negotiation, JSON errors, metrics); the
request logic is `CoverService`, and the generator is any `CoverBackend`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from icg.serve.auth import bearer_token, key_matches
from icg.serve.backend import CoverBackend
from icg.serve.config import ServeConfig
from icg.serve.errors import APIError, install_error_handlers, validation_message
from icg.serve.schemas import CoverRequest
from icg.serve.service import CoverService, ServedCover

COVER_RESPONSES = {
    200: {
        "description": "The cover: a marked PNG, or JSON with base64 and the manifest fields.",
        "content": {"image/png": {}, "application/json": {}},
    },
    **{
        code: {"description": text}
        for code, text in {
            401: "missing or wrong bearer token", 404: "unknown user_id or item_id",
            413: "body or image too large", 422: "invalid request or over a cap",
            429: "queue full (see Retry-After)", 503: "not ready or shutting down",
            504: "deadline exceeded",
        }.items()
    },
}  # fmt: skip


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, "too_large", f"body of {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, "too_large", f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def cover_response(served: ServedCover, as_json: bool) -> Response:
    """PNG bytes (manifest in ``X-ICG-*`` headers) or JSON with the image in base64."""
    manifest = served.manifest()
    if as_json:
        image = base64.b64encode(served.result.png).decode("ascii")
        return JSONResponse({"image": image, "media_type": "image/png", **manifest})
    headers = {
        "X-ICG-Seed": str(manifest["seed"]),
        "X-ICG-Draw-Seed": str(manifest["draw_seed"]),
        "X-ICG-Candidate": str(manifest["candidate"]),
        "X-ICG-Cold-Start": str(manifest["cold_start"]).lower(),
        "X-ICG-Cache": "hit" if served.cached else "miss",
    }
    return Response(served.result.png, media_type="image/png", headers=headers)


def create_app(config: ServeConfig, backend: CoverBackend) -> FastAPI:
    """The cover service app over ``backend``.

    Args:
        config: validated settings (caps, queue, deadline, key).
        backend: the generator; loaded in a thread once the app starts.
    """
    service = CoverService(config, backend)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="icg serve",
        summary="Personalized cover images (ICG) over HTTP.",
        version="1",
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app)

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        if not key_matches(config.api_key, bearer_token(request.headers.get("authorization"))):
            raise APIError(
                401, "unauthorized", "missing or wrong bearer token",
                {"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start, status = time.perf_counter(), 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = getattr(request.scope.get("route"), "path", "unmatched")
            service.metrics.observe_request(route, status, time.perf_counter() - start)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        """The process is up (no auth)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> dict:
        """The models are loaded and requests are served (no auth)."""
        if not service.ready:
            detail = service.load_error or "models are still loading"
            raise APIError(503, "not_ready", detail, {"Retry-After": "5"})
        return {"status": "ready"}

    @app.get("/metrics", tags=["ops"], dependencies=[Depends(authorize)])
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.post(
        "/v1/covers",
        tags=["covers"],
        dependencies=[Depends(authorize)],
        responses=COVER_RESPONSES,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": CoverRequest.model_json_schema()}},
            }
        },
    )
    async def covers(request: Request) -> Response:
        """A personalized cover for a (user, item) pair; ``Accept: application/json`` for JSON."""
        start = asyncio.get_running_loop().time()
        body = await read_body(request, config.max_body_bytes)
        try:
            cover_request = CoverRequest.model_validate_json(body)
        except ValidationError as err:
            raise APIError(
                422, "invalid_request", validation_message(err.errors(include_url=False))
            ) from err
        budget = config.deadline_s - (asyncio.get_running_loop().time() - start)
        served = await service.cover(cover_request, budget)
        as_json = "application/json" in request.headers.get("accept", "")
        return cover_response(served, as_json)

    return app
