"""Errors as a person or a program can read them: plain text, or JSON when asked.

htmx swaps error bodies into the page unless the page script stops it, so bodies are
short readable sentences, never HTML and never a stack trace.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from app.web.common import wants_json

log = logging.getLogger("ripple.errors")

_DEFAULT_REASONS = {
    400: "Bad request.",
    403: "Forbidden: reload the page to get a fresh session.",
    404: "Not found.",
    405: "Method not allowed.",
    410: "Removed.",
    413: "The request is too large.",
    422: "The input was not accepted.",
    429: "Too many requests: try again shortly.",
    500: "Something went wrong on our side.",
    503: "Temporarily unavailable, try again shortly.",
}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _reply(
    request: Request[Any, Any, Any], status: int, reason: str, headers: dict[str, str]
) -> Response[Any]:
    headers = {**headers, "cache-control": "no-store"}
    if wants_json(request):
        return Response(
            {"status_code": status, "detail": reason}, status_code=status, headers=headers
        )
    # Litestar appends "; charset=utf-8" to every text/* media type itself.
    return Response(reason, status_code=status, media_type="text/plain", headers=headers)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if isinstance(exc, ValidationException):
        status = 422
        reason = exc.detail
    elif status == 403 and "csrf" in str(exc.detail).lower():
        reason = "Missing or wrong CSRF token: reload the page and try again."
    else:
        generic = {"", str(status), _phrase(status)}  # Litestar's detail when it has none
        reason = "" if exc.detail in generic else exc.detail
        reason = reason or _DEFAULT_REASONS.get(status, "Request failed.")
    return _reply(request, status, reason, dict(exc.headers or {}))


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, (OSError, SQLAlchemyError)):
        # The driver's error class and SQLSTATE say what happened; the message is not
        # logged, since it may quote a visitor's text among the statement's parameters.
        cause = getattr(exc, "orig", None) or exc
        log.warning(
            "database unavailable during %s %s: %s (%s sqlstate=%s)",
            request.method,
            request.url.path,
            type(exc).__name__,
            type(cause).__name__,
            getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None),
        )
        return _reply(
            request,
            503,
            "The database is unavailable; nothing was saved. Try again shortly.",
            {"retry-after": "2"},
        )
    log.exception("unhandled error during %s %s", request.method, request.url.path)
    return _reply(request, 500, _DEFAULT_REASONS[500], {})
