"""One error renderer for every error answer: Litestar's handlers and the front door's own.

Errors are short sentences a person or a program can read: plain text, or JSON when
asked. htmx swaps error bodies into the page unless the page script stops it, so they are
never HTML and never a stack trace. Only our own `PublicError`s carry their text to the
client: anything else (Litestar's internals, the static files router, a driver) gets the
status's default sentence, so no error body can name a path, a host or a query.
"""

from __future__ import annotations

import json as jsonlib
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import Send
from sqlalchemy.exc import SQLAlchemyError

from app import metrics
from app.web.security import Kind, kind_headers, kind_pairs

log = logging.getLogger("ripple.errors")

DEFAULT_REASONS = {
    400: "Bad request.",
    403: "Forbidden: reload the page to get a fresh session.",
    404: "Not found.",
    405: "Method not allowed.",
    409: "The same request is still being processed: try again shortly.",
    410: "Removed.",
    413: "The request is too large.",
    422: "The input was not accepted.",
    429: "Too many requests: try again shortly.",
    500: "Something went wrong on our side.",
    503: "Temporarily unavailable, try again shortly.",
}
# Not "nothing was saved": a write whose COMMIT timed out may still commit. A retry with the
# same Idempotency-Key (the page keeps one per form content) is never saved twice.
DATABASE_UNAVAILABLE = "The database is unavailable right now; try again shortly."


class PublicError(HTTPException):
    """An error whose detail is written for the visitor and may be shown as it is."""


class BadRequest(PublicError):
    status_code = 400


class NotFound(PublicError):
    status_code = 404


class Gone(PublicError):
    status_code = 410


class Unprocessable(PublicError):
    status_code = 422


class TooManyRequests(PublicError):
    status_code = 429


def default_reason(status: int) -> str:
    if status in DEFAULT_REASONS:
        return DEFAULT_REASONS[status]
    try:
        return HTTPStatus(status).phrase + "."
    except ValueError:
        return "Request failed."


def wants_json_header(accept: str) -> bool:
    return "application/json" in accept


def render_error(status: int, reason: str, *, json: bool) -> tuple[bytes, str]:
    """The body and media type of an error answer (UTF-8 either way)."""
    if json:
        body = jsonlib.dumps({"status_code": status, "detail": reason}).encode()
        return body, "application/json"
    return reason.encode(), "text/plain"


def error_response(
    request: Request[Any, Any, Any],
    status: int,
    reason: str,
    extra: Mapping[str, str] | None = None,
) -> Response[Any]:
    """An error as a Litestar response (security headers come from the before-send hook)."""
    body, media_type = render_error(
        status, reason, json=wants_json_header(request.headers.get("accept", ""))
    )
    headers = {**kind_headers(Kind.ERROR), **(extra or {})}
    # Litestar appends "; charset=utf-8" to text/* itself.
    return Response(body, status_code=status, media_type=media_type, headers=headers)


async def send_error(
    send: Send,
    status: int,
    reason: str,
    *,
    json: bool,
    production: bool,
    extra: Mapping[str, str] | None = None,
) -> None:
    """The same error answer, written straight to an ASGI `send` (the front door's paths)."""
    body, media_type = render_error(status, reason, json=json)
    content_type = media_type if json else f"{media_type}; charset=utf-8"
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in (extra or {}).items()),
        *kind_pairs(Kind.ERROR, production),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if isinstance(exc, PublicError) and exc.detail and exc.detail != str(status):
        reason = exc.detail
    else:
        reason = default_reason(status)
    return error_response(request, status, reason, exc.headers)


def is_database_outage(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, SQLAlchemyError, TimeoutError))


def log_database_outage(method: str, path: str, exc: BaseException) -> None:
    """The driver's error class and SQLSTATE say what happened; the message is not logged,
    since it may quote a visitor's text among the statement's parameters."""
    cause = getattr(exc, "orig", None) or exc
    log.warning(
        "database unavailable during %s %s: %s (%s sqlstate=%s)",
        method,
        path,
        type(exc).__name__,
        type(cause).__name__,
        getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None),
    )


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if is_database_outage(exc):
        metrics.DATABASE_UNAVAILABLE.inc()
        log_database_outage(request.method, request.url.path, exc)
        return error_response(request, 503, DATABASE_UNAVAILABLE, {"retry-after": "2"})
    log.exception("unhandled error during %s %s", request.method, request.url.path)
    return error_response(request, 500, DEFAULT_REASONS[500])
