"""create_app(settings) -> Litestar: routes, templates, static files, CSRF, lifespan."""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar
from litestar.config.csrf import CSRFConfig
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.datastructures import CacheControlHeader, ResponseHeader, State
from litestar.exceptions import HTTPException
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from app.config import Settings
from app.runtime import Runtime, lifespan
from app.web import actions, events, fragments, pages, system
from app.web.errors import http_error, unexpected_error

ROOT = Path(__file__).resolve().parent.parent

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)
SECURITY_HEADERS = [
    ResponseHeader(name="content-security-policy", value=CONTENT_SECURITY_POLICY),
    ResponseHeader(name="x-content-type-options", value="nosniff"),
    ResponseHeader(name="referrer-policy", value="same-origin"),
    ResponseHeader(name="x-frame-options", value="DENY"),
]
MAX_BODY_BYTES = 16 * 1024  # a 280-character message is at most ~3.4 KiB encoded


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    runtime = Runtime(settings)
    headers = list(SECURITY_HEADERS)
    if settings.production:
        headers.append(ResponseHeader(name="strict-transport-security", value="max-age=31536000"))
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
        template_config=TemplateConfig(directory=ROOT / "templates", engine=JinjaTemplateEngine),
        csrf_config=CSRFConfig(
            secret=settings.secret_key,
            cookie_name="csrftoken",
            header_name="x-csrftoken",
            cookie_secure=settings.production,
            cookie_samesite="lax",
            exclude=["/events", "/healthz", "/metrics"],
        ),
        response_headers=headers,
        exception_handlers={HTTPException: http_error, Exception: unexpected_error},
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=None,
        debug=False,
    )
