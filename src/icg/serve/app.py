"""The FastAPI app: ``POST /v1/covers``, ``/healthz``, ``/readyz``, ``/metrics``, ``/docs``
(a self-contained page, no CDN) and ``/openapi.json``; with an API key, all but the health
endpoints need it.

    app = create_app(ServeConfig(run=RUN, data=DATA), PipelineBackend(RUN, DATA))

The app only frames HTTP (auth, body limit, content negotiation, JSON errors, metrics); the
request logic is `CoverService`, and the generator is any `CoverBackend`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from icg.serve.auth import bearer_token, key_matches
from icg.serve.backend import CoverBackend
from icg.serve.config import ServeConfig
from icg.serve.docs_page import CSP, docs_html
from icg.serve.errors import APIError, install_error_handlers, validation_message
from icg.serve.schemas import CoverRequest
from icg.serve.service import CoverService, ServedCover

logger = logging.getLogger(__name__)

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


INLINE_PARSE_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop; larger ones in a worker thread, so a
large hostile body never stalls ``/healthz``."""


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or streamed) and with
    408 when it has not all arrived ``timeout_s`` after the headers (a trickled body)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, "too_large", f"body of {declared} bytes; the limit is {limit}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    chunks, size, stream = [], 0, request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(deadline - loop.time(), 0))
        except StopAsyncIteration:
            break
        except TimeoutError as err:
            raise APIError(
                408, "request_timeout", f"body not received within {timeout_s:g} s",
                {"Connection": "close"},
            ) from err  # fmt: skip
        except ClientDisconnect as err:
            logger.info("%s: client disconnected while sending the body", request.url.path)
            raise APIError(400, "client_disconnected", "the client went away") from err
        size += len(chunk)
        if size > limit:
            raise APIError(413, "too_large", f"body over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


MAX_COLONS = 8192
"""A request has at most a dozen fields; titles and ids may hold colons, base64 never does. A
body with more is refused before `json.loads` (which holds the GIL while it parses)."""


def parse_request(body: bytes, max_errors: int) -> CoverRequest:
    """A `CoverRequest` from JSON bytes; unknown fields are refused before pydantic builds an
    error per key, and at most ``max_errors`` errors are listed.

    Raises:
        APIError: 422 naming the fields.
    """
    colons = body.count(b":")  # one C pass: a JSON object of many keys is refused unparsed
    if colons > MAX_COLONS:
        raise APIError(
            422, "invalid_request",
            f"body: {colons} ':' characters, over {MAX_COLONS}; expected one CoverRequest object",
        )  # fmt: skip
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise APIError(422, "invalid_request", "body: expected a JSON object") from err
    if not isinstance(value, dict):
        raise APIError(
            422, "invalid_request", f"body: expected a JSON object, got {type(value).__name__}"
        )
    unknown = [k for k in value if k not in CoverRequest.model_fields]
    if unknown:
        shown = ", ".join(repr(k[:64]) for k in unknown[:max_errors])
        more = f" and {len(unknown) - max_errors} more" if len(unknown) > max_errors else ""
        raise APIError(422, "invalid_request", f"unknown field(s) {shown}{more}")
    try:
        return CoverRequest.model_validate(value)
    except ValidationError as err:
        raise APIError(
            422, "invalid_request", validation_message(err.errors(include_url=False), max_errors)
        ) from err


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
        docs_url=None,  # served below: behind the key, and without Swagger UI's CDN assets
        redoc_url=None,
        openapi_url=None,
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

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorize)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(authorize)])
    async def docs() -> HTMLResponse:
        return HTMLResponse(docs_html(app.openapi()), headers={"Content-Security-Policy": CSP})

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
        with service.batcher.arriving() as arrival:  # a partial call may wait for this one
            body = await read_body(request, config.max_body_bytes, config.body_timeout_s)
            if len(body) <= INLINE_PARSE_BYTES:
                cover_request = parse_request(body, config.max_error_items)
            else:  # off the event loop: health checks keep answering
                cover_request = await run_in_threadpool(parse_request, body, config.max_error_items)
            budget = config.deadline_s - (asyncio.get_running_loop().time() - start)
            served = await service.cover(cover_request, budget, arrival)
        as_json = "application/json" in request.headers.get("accept", "")
        return cover_response(served, as_json)

    return app
