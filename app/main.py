"""create_app(settings): the app that is served: routes, templates, static files, CSRF,
lifespan, behind the front door (app.web.frontdoor)."""

from __future__ import annotations

from pathlib import Path

from litestar.datastructures import CacheControlHeader, State
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import BeforeMessageSendHookHandler, Message, Scope

from app.config import Settings
from app.runtime import Runtime, lifespan
from app.web import actions, fragments, pages, system
from app.web.csrf import csrf_protection
from app.web.errors import http_error, unexpected_error
from app.web.frontdoor import FrontDoor
from app.web.security import security_pairs

ROOT = Path(__file__).resolve().parent.parent

MAX_BODY_BYTES = 16 * 1024  # a 280-character message is at most ~3.4 KiB encoded


def security_headers_hook(production: bool) -> BeforeMessageSendHookHandler:
    """Add the security headers to every response Litestar sends.

    `response_headers=` reaches only responses of matched route handlers; errors raised
    before a handler (404, 405, 413) bypass it. The front door's own answers take the
    same headers from app.web.security.
    """
    pairs = security_pairs(production)

    async def add_headers(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = list(message.get("headers", ()))  # never mutate a shared header list
        present = {bytes(name).lower() for name, _ in headers}
        missing = [pair for pair in pairs if pair[0] not in present]
        if missing:
            message["headers"] = headers + missing

    return add_headers


def _templates_fixed(engine: JinjaTemplateEngine) -> None:
    """Templates do not change while the app runs: no file stat on every render (Jinja's
    auto-reload stats each template's file on every lookup, which every fragment pays)."""
    engine.engine.auto_reload = False


def create_app(settings: Settings | None = None) -> FrontDoor:
    settings = settings or Settings.from_env()
    runtime = Runtime(settings)
    app = FrontDoor(
        route_handlers=[
            pages.index,
            fragments.counter_fragment,
            fragments.presence_fragment,
            fragments.activity_item,
            fragments.activity_list,
            actions.increment,
            actions.post_activity,
            actions.rename,
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
        middleware=[csrf_protection(settings)],
        before_send=[security_headers_hook(settings.production)],
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=None,
        debug=False,
    )
    engine = app.template_engine
    assert engine is not None
    runtime.item_entry = lambda item: fragments.item_entry(
        fragments.item_html(engine, item), settings.production
    )
    return app
