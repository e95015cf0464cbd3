"""create_app(settings) -> Litestar: routes, templates, static files, CSRF, lifespan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Litestar, Request
from litestar.config.csrf import CSRFConfig
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.datastructures import CacheControlHeader, State
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, PermissionDeniedException
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, BeforeMessageSendHookHandler, Message, Receive, Scope, Send

from app.config import Settings
from app.runtime import Runtime, lifespan
from app.web import actions, events, fragments, pages, system
from app.web.errors import http_error, unexpected_error
from app.web.security import security_header_pairs

ROOT = Path(__file__).resolve().parent.parent

MAX_BODY_BYTES = 16 * 1024  # a 280-character message is at most ~3.4 KiB encoded
CSRF_COOKIE = "csrftoken"
CSRF_HEADER = "x-csrftoken"
# Besides the stream and the probes: responses a CDN may cache must not set the token cookie.
CSRF_EXEMPT = ["^/events$", "^/healthz$", "^/metrics$", r"^/fragments/activity/\d+$", "^/static/"]


def security_headers_hook(production: bool) -> BeforeMessageSendHookHandler:
    """Add the security headers to every response the app sends.

    `response_headers=` reaches only responses of matched route handlers; errors raised
    before a handler (404, 405, CSRF 403, 413) bypass it. The event stream sets its own.
    """
    pairs = security_header_pairs(production)

    async def add_headers(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = list(message.get("headers", ()))  # never mutate a shared header list
        present = {bytes(name).lower() for name, _ in headers}
        missing = [pair for pair in pairs if pair[0] not in present]
        if missing:
            message["headers"] = headers + missing

    return add_headers


def require_csrf_header(app: ASGIApp) -> ASGIApp:
    """Refuse an unsafe request without an ASCII `x-csrftoken` header before Litestar's check.

    Litestar's CSRF middleware would otherwise fall back to parsing the body for a
    `_csrf_token` field (a multipart part that is not UTF-8 raises there), and it compares
    tokens with `hmac.compare_digest`, which raises TypeError on non-ASCII text. The
    contract names the header as the only carrier, so nothing is lost.
    """

    async def guard(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope["method"] not in {"GET", "HEAD", "OPTIONS"}:
            request: Request[Any, Any, Any] = Request(scope)
            header = request.headers.get(CSRF_HEADER, "")
            cookie = request.cookies.get(CSRF_COOKIE, "")
            if not header or not header.isascii() or not cookie.isascii():
                raise PermissionDeniedException("CSRF token verification failed")
        await app(scope, receive, send)

    return guard


def _templates_fixed(engine: JinjaTemplateEngine) -> None:
    """Templates do not change while the app runs: no file stat on every render (Jinja's
    auto-reload checks each template's mtime on every lookup, a tenth of a fragment's CPU)."""
    engine.engine.auto_reload = False


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    runtime = Runtime(settings)
    return Litestar(
        route_handlers=[
            pages.index,
            fragments.counter_fragment,
            fragments.presence_fragment,
            fragments.activity_item,
            fragments.activity_list,
            actions.increment,
            actions.post_activity,
            actions.rename,
            events.events,
            system.healthz,
            system.metrics_endpoint,
            create_static_files_router(
                path="/static",
                directories=[ROOT / "static"],
                cache_control=CacheControlHeader(max_age=300, public=True),
            ),
        ],
        state=State({"runtime": runtime}),
        lifespan=[lifespan],
        template_config=TemplateConfig(
            directory=ROOT / "templates",
            engine=JinjaTemplateEngine,
            engine_callback=_templates_fixed,
        ),
        csrf_config=CSRFConfig(
            secret=settings.secret_key,
            cookie_name=CSRF_COOKIE,
            header_name=CSRF_HEADER,
            cookie_secure=settings.production,
            cookie_samesite="lax",
            exclude=CSRF_EXEMPT,
        ),
        middleware=[require_csrf_header],
        before_send=[security_headers_hook(settings.production)],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=None,
        debug=False,
    )
