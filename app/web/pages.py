"""GET /: the whole page. It reads, and writes nothing (crawlers and probes hit it)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from app.models import MESSAGE_MAX, NAME_MAX
from app.services import feed, visitors
from app.web import csrf
from app.web.common import html, identity_cookie, render, runtime, visitor_of
from app.web.fragments import rendered_items
from app.web.security import Kind, kind_headers


class _Limits:
    message_max = MESSAGE_MAX
    name_max = NAME_MAX


class _Visitor:
    def __init__(self, id: str, name: str) -> None:
        self.id = id
        self.name = name


@get("/")
async def index(request: Request[Any, Any, Any]) -> Response[Any]:
    rt = runtime(request)
    who, needs_cookie = visitor_of(request)
    generation = rt.hub.resync_generation
    name = await visitors.display_name(rt.db, who)  # the guest name until recorded
    items, has_older = await feed.page_before(rt.db, None)
    cursor = max((item.id for item in items), default=0)
    if not items:
        cursor = await feed.newest_id(rt.db)  # everything may be hidden; still a valid cursor
    body = render(
        request,
        "index.html",
        visitor=_Visitor(who.id.hex, name),
        counter_value=await rt.counter_reads.get(None),
        presence=await rt.presence_reads.get(None),
        rendered_items=rendered_items(request, items, generation),
        cursor=cursor,
        has_older=has_older,
        limits=_Limits,
        stream_url=f"/events?last_event_id={cursor}",
        csrf_token=csrf.token_of(request.scope),
        silence_ms=round(rt.settings.stream_silence_seconds * 1000),
    )
    response = html(body, headers=kind_headers(Kind.PAGE))
    if needs_cookie:
        response.set_cookie(identity_cookie(request, who))
    return response
