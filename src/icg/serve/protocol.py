"""Connection guards under uvicorn's HTTP protocol: a header read timeout and a connection cap.

uvicorn closes idle kept-alive connections but never times out a request whose headers arrive
slowly, and its own ``limit_concurrency`` answers 503 in plain text only once a request has been
read. `guarded_protocol` subclasses the protocol uvicorn would use: a connection whose request
headers are not complete within ``header_timeout_s`` (from connect, or from the previous
response) gets a JSON 408 and is closed, and a connection past ``max_connections`` gets a JSON
503 with ``Retry-After`` at once, before anything is read, so its descriptor is freed.
"""

from __future__ import annotations

import asyncio
import json
import logging

logger = logging.getLogger(__name__)


def raw_json_response(status: int, reason: str, error: str, detail: str, retry_after=None) -> bytes:
    """A complete HTTP/1.1 response with a JSON error body and ``Connection: close``."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_protocol(base: type[asyncio.Protocol], header_timeout_s: float, max_connections: int):
    """``base`` (uvicorn's HTTP protocol class) with a header timeout and a connection cap."""

    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # noqa: ANN001 - uvicorn's signature
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                logger.warning("connection cap of %d reached: answered 503", max_connections)
                transport.write(
                    raw_json_response(
                        503, "Service Unavailable", "too_many_connections",
                        f"the server holds {max_connections} connections; retry shortly", 1,
                    )
                )  # fmt: skip
                transport.close()
                return
            self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and not self.transport.is_closing():  # no request under way
                self.transport.write(
                    raw_json_response(
                        408, "Request Timeout", "request_timeout",
                        f"request headers not received within {header_timeout_s:g} s",
                    )
                )  # fmt: skip
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request's headers, on a kept-alive connection

        def connection_lost(self, exc) -> None:  # noqa: ANN001 - uvicorn's signature
            self._cancel_header_timer()
            super().connection_lost(exc)

    return GuardedProtocol
