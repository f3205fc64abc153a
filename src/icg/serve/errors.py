"""JSON errors: every failure is ``{"error": code, "detail": message}``, never a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered as JSON with a status code.

    Args:
        status: the HTTP status.
        error: a short stable code (``"unauthorized"``, ``"queue_full"``, ...).
        detail: a message for people: what was wrong and what was expected.
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self, status: int, error: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON response of an error."""
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


MAX_ERROR_ITEMS = 10
MAX_FIELD_CHARS = 64


def validation_message(errors: list[dict], max_items: int = MAX_ERROR_ITEMS) -> str:
    """``field: message`` per pydantic error, the first ``max_items`` of them (field names cut
    to 64 characters), then how many more there were: a 422 stays small whatever the body."""
    lines = []
    for err in errors[:max_items]:
        where = ".".join(str(p)[:MAX_FIELD_CHARS] for p in err.get("loc", ()) if p != "body")
        lines.append(f"{where or 'body'}: {str(err.get('msg', 'invalid'))[:200]}")
    if len(errors) > max_items:
        lines.append(f"and {len(errors) - max_items} more error(s)")
    return "; ".join(lines)


def install_error_handlers(app: FastAPI) -> None:
    """Answer `APIError`, validation errors, HTTP errors and anything unexpected as JSON."""

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal", "internal server error; see the server log")
