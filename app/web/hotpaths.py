"""The two requests every event multiplies, answered ahead of Litestar's middleware.

Litestar's middleware (exception handling, CSRF, the before-send hook) wraps `send` and
parses each request. Measured, that is a fifth of a stream's CPU per frame (every frame
of every stream went through three wrappers) and most of the CPU of an item fragment
answered from memory. Neither needs it: the stream is GET only and sets its own headers,
and a cached item is a fixed answer. Anything else, a cache miss included, goes to
Litestar, whose handlers answer the same way (app.web.fragments, app.web.events).
"""

from __future__ import annotations

import re

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Receive,
    Scope,
    Send,
)

from app import metrics
from app.models import ACTIVITY_ID_MAX
from app.runtime import Runtime
from app.web.events import serve_stream
from app.web.fragments import ITEM_HEADERS
from app.web.security import security_header_pairs

ITEM_PATH = re.compile(r"/fragments/activity/([1-9][0-9]{0,18})")


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send(HTTPResponseStartEvent(type="http.response.start", status=status, headers=headers))
    await send(HTTPResponseBodyEvent(type="http.response.body", body=body, more_body=False))


def hot_paths(app: Litestar) -> ASGIApp:
    """The ASGI app the server runs: `app`, with `/events` and cached items answered first."""
    rt: Runtime = app.state.runtime
    fixed = [(name.encode(), value.encode()) for name, value in ITEM_HEADERS.items()]
    fixed += security_header_pairs(rt.settings.production)
    served = metrics.FRAGMENTS_SERVED.labels("activity")  # the label looked up once

    async def cached_item(scope: HTTPScope, send: Send) -> bool:
        """Answer from this worker's rendered items; False if it is not there."""
        match = ITEM_PATH.fullmatch(scope["path"])
        if match is None or scope["method"] != "GET":
            return False
        item_id = int(match.group(1))
        if item_id > ACTIVITY_ID_MAX:
            return False
        if_none_match = b""
        for name, value in scope["headers"]:
            if name == b"accept" and b"application/json" in value:
                return False  # JSON is not cached
            if name == b"if-none-match":
                if_none_match = value
        cached = rt.item_cache.get(item_id, rt.hub.resync_generation)
        if cached is None:
            return False
        body, etag = cached
        served.inc()
        headers: list[tuple[bytes, bytes]] = [(b"etag", etag.encode()), *fixed]
        if if_none_match == etag.encode():
            await _answer(send, 304, headers, b"")
        else:
            headers.append((b"content-type", b"text/html; charset=utf-8"))
            headers.append((b"content-length", str(len(body)).encode()))
            await _answer(send, 200, headers, body)
        return True

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            if scope["path"] == "/events":
                await serve_stream(rt, scope, receive, send)
                return
            if await cached_item(scope, send):
                return
        await app(scope, receive, send)

    return route
