"""GET /fragments/...: the small pieces a page swaps in when an event names them.

Feed items are the same for every viewer ("you" and relative times are added in the
browser), so each is rendered once per worker and may be cached by proxies.
"""

from __future__ import annotations

import hashlib
from typing import Any

from litestar import Request, Response, get
from litestar.params import FromPath
from litestar.template import TemplateEngineProtocol
from markupsafe import Markup

from app import metrics
from app.itemcache import CachedItem
from app.services import feed
from app.web import params
from app.web.common import html, render, runtime, wants_json
from app.web.errors import BadRequest, Gone, NotFound
from app.web.security import Kind, kind_headers, kind_pairs


def _state_headers() -> dict[str, str]:
    return kind_headers(Kind.STATE)


@get("/fragments/counter")
async def counter_fragment(request: Request[Any, Any, Any]) -> Response[Any]:
    metrics.FRAGMENTS_SERVED.labels("counter").inc()
    value = await runtime(request).counter_reads.get(None)
    if wants_json(request):
        return Response({"value": value}, headers=_state_headers())
    return html(
        render(request, "partials/counter.html", counter_value=value), headers=_state_headers()
    )


@get("/fragments/presence")
async def presence_fragment(request: Request[Any, Any, Any]) -> Response[Any]:
    metrics.FRAGMENTS_SERVED.labels("presence").inc()
    rt = runtime(request)
    view = await rt.presence_reads.get(None)
    if wants_json(request):
        return Response(
            {
                "online": view.online_count,
                "visitors": [{"id": v.id, "name": v.name} for v in view.visitors],
            },
            headers=_state_headers(),
        )
    return html(render(request, "partials/presence.html", presence=view), headers=_state_headers())


def item_json(item: feed.ActivityView) -> dict[str, Any]:
    return {
        "id": item.id,
        "kind": item.kind,
        "author_id": item.author_id,
        "author_name": item.author_name,
        "body": item.body,
        "created_at": item.created_at.isoformat(),
    }


ITEM_TEMPLATE = "partials/activity_item.html"


def item_html(engine: TemplateEngineProtocol[Any, Any], item: feed.ActivityView) -> bytes:
    return str(engine.get_template(ITEM_TEMPLATE).render(item=item)).encode()


def item_entry(body: bytes, production: bool) -> CachedItem:
    """An item's HTML with its ETag and its answers, ready to send from memory.

    The same Kind.ITEM headers as every other answer of an item (app.web.security)."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    pairs = [(b"etag", etag.encode()), *kind_pairs(Kind.ITEM, production)]
    common = b"".join(name + b": " + value + b"\r\n" for name, value in pairs)
    ok_head = (
        common
        + b"content-type: text/html; charset=utf-8\r\n"
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    return CachedItem(
        body=body, etag=etag, ok=ok_head + body, ok_head=ok_head, not_modified=common + b"\r\n"
    )


def render_item(
    request: Request[Any, Any, Any], item: feed.ActivityView, read_at_generation: int
) -> CachedItem:
    """An item's HTML and ETag, rendered once per worker.

    `read_at_generation` is the resync generation from before the item was read: if a
    resync (a hide) came in since, the answer is not kept.
    """
    rt = runtime(request)
    cached = rt.item_cache.get(item.id)
    if cached is not None:
        return cached
    engine = request.app.template_engine
    assert engine is not None
    entry = item_entry(item_html(engine, item), rt.settings.production)
    rt.item_cache.put(item.id, entry, read_at_generation)
    return entry


def rendered_items(
    request: Request[Any, Any, Any], items: list[feed.ActivityView], read_at_generation: int
) -> list[Markup]:
    """Each item's HTML for partials/activity_list.html, from the per-worker cache.

    Safe as markup: it is the output of an autoescaping template, not user text.
    """
    return [
        Markup(render_item(request, item, read_at_generation).body.decode())  # noqa: S704
        for item in items
    ]


def _item_response(request: Request[Any, Any, Any], entry: CachedItem) -> Response[Any]:
    """Also answered, from memory, by app.web.frontdoor with the same Kind.ITEM headers."""
    metrics.ITEMS_SERVED.inc()
    headers = {"etag": entry.etag, **kind_headers(Kind.ITEM)}
    if request.headers.get("if-none-match") == entry.etag:
        return Response(content=b"", status_code=304, headers=headers)
    return html(entry.body, headers=headers)


@get("/fragments/activity/{raw_id:str}")
async def activity_item(request: Request[Any, Any, Any], raw_id: FromPath[str]) -> Response[Any]:
    item_id = params.item_id(raw_id)
    if item_id is None:  # only canonical positive bigints; asking is not an outage
        raise NotFound("No such feed item.")
    json = wants_json(request)
    generation = runtime(request).hub.resync_generation
    if not json:  # every page fetches the same item at once: answer from memory
        runtime(request).item_cache.fetched = True
        cached = runtime(request).item_cache.get(item_id)
        if cached is not None:
            return _item_response(request, cached)
    try:
        item = await runtime(request).item_reads.get(item_id)
    except feed.Hidden:
        runtime(request).item_cache.forget(item_id)
        raise Gone("This item was removed by a moderator.") from None
    if item is None:
        raise NotFound("No such feed item.")
    if json:
        return Response(item_json(item), headers=kind_headers(Kind.ITEM_JSON))
    return _item_response(request, render_item(request, item, generation))


def _cursor(raw: str | None, name: str) -> int | None:
    try:
        return params.cursor(raw)
    except params.BadCursor:
        raise BadRequest(f"{name} must be a feed item id (a whole number).") from None


@get("/fragments/activity")
async def activity_list(request: Request[Any, Any, Any]) -> Response[Any]:
    """?after=N: the items right after N; ?before=N: the items right before N; neither: the
    newest. The HTML answer is the items alone, plus out-of-band controls htmx swaps into the
    page: the feed cursor (after=N and the newest page: the answers that may move it) and the
    "Older" button (before=N and the newest page)."""
    metrics.FRAGMENTS_SERVED.labels("activity-list").inc()
    db = runtime(request).db
    generation = runtime(request).hub.resync_generation
    after = _cursor(request.query_params.get("after"), "after")
    before = _cursor(request.query_params.get("before"), "before")
    cursor: int | None = None
    complete = True
    has_older: bool | None = None
    if after is not None:
        items = await runtime(request).pages_after.get(after)
        # Ids follow commit order: every visible item up to the newest one returned is in
        # this answer; a short page means nothing else existed after N when it was read.
        cursor = max([after, *(item.id for item in items)])
        complete = len(items) < feed.PAGE_SIZE
    else:
        items, has_older = await feed.page_before(db, before)
        if before is None:
            cursor = max((item.id for item in items), default=0) or await feed.newest_id(db)
    if wants_json(request):
        return Response(
            {"items": [item_json(i) for i in items], "has_older": bool(has_older)},
            headers=_state_headers(),
        )
    body = render(
        request,
        "partials/activity_list.html",
        rendered_items=rendered_items(request, items, generation),
        cursor=cursor,
        complete=complete,
        has_older=has_older,
    )
    return html(body, headers=_state_headers())
