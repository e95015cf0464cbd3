"""GET /: the whole page. It reads, and writes nothing (crawlers and probes hit it).

The same page answers a refused plain form post (no JavaScript): the reason in the form's
message area, what the visitor typed kept in its field, the refusal's status kept.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import HTTPException

from app.identity import Identity
from app.models import MESSAGE_MAX, NAME_MAX
from app.services import feed, visitors
from app.web import csrf, errors
from app.web.common import answer_kind, html, identity_cookie, render, runtime, visitor_of
from app.web.fragments import rendered_items
from app.web.security import Kind, kind_headers
from app.web.validation import InvalidInput, parse_form

log = logging.getLogger("ripple.pages")


class _Limits:
    message_max = MESSAGE_MAX
    name_max = NAME_MAX


class _Visitor:
    def __init__(self, id: str, name: str) -> None:
        self.id = id
        self.name = name


async def page_context(request: Request[Any, Any, Any], who: Identity) -> dict[str, Any]:
    """Everything index.html needs, read fresh (the refusal page shows the same)."""
    rt = runtime(request)
    generation = rt.hub.resync_generation
    name = await visitors.display_name(rt.db, who)  # the guest name until recorded
    items, has_older = await feed.page_before(rt.db, None)
    cursor = max((item.id for item in items), default=0)
    if not items:
        cursor = await feed.newest_id(rt.db)  # everything may be hidden; still a valid cursor
    return {
        "visitor": _Visitor(who.id.hex, name),
        "counter_value": await rt.counter_reads.get(None),
        "presence": await rt.presence_reads.get(None),
        "rendered_items": rendered_items(request, items, generation),
        "cursor": cursor,
        "has_older": has_older,
        "limits": _Limits,
        "stream_url": f"/events?last_event_id={cursor}",
        "csrf_token": csrf.token_of(request.scope),
        "silence_ms": round(rt.settings.stream_silence_seconds * 1000),
        "errors": {},  # message area id -> the reason shown in it
        "typed": {},  # form field -> what the visitor typed
    }


async def render_page(
    request: Request[Any, Any, Any],
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    typed: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    who, needs_cookie = visitor_of(request)
    context = await page_context(request, who)
    context["errors"] = errors or {}
    context["typed"] = typed or {}
    body = render(request, "index.html", **context)
    response = html(body, status=status, headers={**kind_headers(Kind.PAGE), **(headers or {})})
    if needs_cookie:
        response.set_cookie(identity_cookie(request, who))
    return response


@get("/")
async def index(request: Request[Any, Any, Any]) -> Response[Any]:
    return await render_page(request)


Handler = Callable[[Request[Any, Any, Any]], Awaitable[Response[Any]]]


def refusals_as_page(*, area: str, field: str | None = None) -> Callable[[Handler], Handler]:
    """A refused plain form post (422, 429, 409, 503) answers the page with the reason in
    the message area `area` and the typed `field` kept. htmx and JSON clients keep the one
    error renderer's answer (app.web.errors). Litestar's exception handlers are synchronous,
    and the page needs database reads, so this wraps the handler instead."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def handle(request: Request[Any, Any, Any]) -> Response[Any]:
            try:
                return await handler(request)
            except HTTPException as exc:
                if answer_kind(request) != "plain" or exc.status_code < 400:
                    raise
                refusal = errors.http_error(request, exc)
                return await _refused(request, refusal, area, field, exc)
            except Exception as exc:
                if answer_kind(request) != "plain" or not errors.is_database_outage(exc):
                    raise
                refusal = errors.unexpected_error(request, exc)
                return await _refused(request, refusal, area, field, exc)

        return handle

    return decorate


async def _refused(
    request: Request[Any, Any, Any],
    refusal: Response[Any],
    area: str,
    field: str | None,
    exc: Exception,
) -> Response[Any]:
    """The page with the error renderer's reason; its plain answer when the page cannot be
    read either (the database is down)."""
    reason = refusal.content.decode() if isinstance(refusal.content, bytes) else ""
    headers = {k: v for k, v in refusal.headers.items() if k.lower() == "retry-after"}
    typed = {field: await _typed(request, field)} if field else {}
    try:
        return await render_page(
            request,
            status=refusal.status_code or 500,
            errors={area: reason},
            typed=typed,
            headers=headers,
        )
    except Exception as page_error:
        if not errors.is_database_outage(page_error):
            raise
        log.info("refusal page unavailable, answering plainly: %s", type(page_error).__name__)
        raise exc from None


async def _typed(request: Request[Any, Any, Any], field: str) -> str:
    """What the visitor typed (the body was read already, so this reads it from memory)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return ""
    try:
        return parse_form(await request.body()).get(field, "")
    except InvalidInput:
        return ""
