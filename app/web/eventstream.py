"""GET /events: subscribe, replay what the client missed, then live events.

A raw ASGI handler (see app.realtime.stream for why). It never holds a database
session while streaming: the replay query uses a short transaction of its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar import Request
from litestar.types import Receive, Scope, Send
from sqlalchemy.exc import SQLAlchemyError

from app import identity, metrics
from app.realtime import ACTIVITY, PING, RESYNC, encode_frame, write_stream
from app.runtime import Runtime
from app.services import feed
from app.web import params
from app.web.errors import send_error
from app.web.security import Kind, kind_pairs

log = logging.getLogger("ripple.stream")

RETRY_MS = 1000


async def _refuse(rt: Runtime, send: Send, status: int, reason: str, retry_after: int) -> None:
    metrics.STREAMS_REFUSED.labels(reason).inc()
    await send_error(
        send,
        status,
        f"Stream refused ({reason}); retry in {retry_after} s.",
        json=False,
        production=rt.settings.production,
        extra={"retry-after": str(retry_after)},
    )


async def _opening_frames(rt: Runtime, cursor: int | None) -> tuple[bytes, int]:
    """The first frames (retry + ping, then the replay) and the highest feed id they cover:
    live frames up to that id are duplicates of the replay."""
    first = [encode_frame(PING, "", retry_ms=RETRY_MS)]
    if cursor is None:
        return first[0], 0
    ids, newest = await feed.ids_after(rt.db, cursor)
    if cursor > newest or len(ids) > feed.REPLAY_LIMIT:
        reason = "cursor-ahead" if cursor > newest else "too-far-behind"
        first.append(encode_frame(RESYNC, reason, event_id=newest))
        return b"".join(first), newest
    first.extend(encode_frame(ACTIVITY, str(i), event_id=i) for i in ids)
    return b"".join(first), ids[-1] if ids else cursor


async def serve_stream(
    rt: Runtime, scope: Scope, receive: Receive, send: Send, *, head: bool = False
) -> None:
    """One GET /events request, from its checks to the end of the stream (app.web.frontdoor
    sends it here; `head`: answer the headers a stream would get, and nothing more)."""
    if scope.get("method") != "GET":
        await send_error(
            send,
            405,
            "Method not allowed: the event stream is GET only.",
            json=False,
            production=rt.settings.production,
            extra={"allow": "GET, HEAD"},
        )
        return
    settings = rt.settings
    if rt.stopping.is_set():
        await _refuse(rt, send, 503, "shutting-down", 1)
        return
    if len(rt.hub) >= settings.max_streams_per_worker:
        await _refuse(rt, send, 503, "worker-full", 5)
        return
    headers = list(kind_pairs(Kind.STREAM, settings.production))
    if head:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    who, ip, cursor = _who_and_where(rt, scope, receive)
    keys = [f"ip:{ip}"] + ([f"v:{who.id.hex}"] if who else [])
    cap = settings.max_streams_per_client
    if cap and any(rt.streams_per_key[k] >= cap for k in keys):
        await _refuse(rt, send, 429, "client-limit", 10)
        return
    for key in keys:
        rt.streams_per_key[key] += 1
    sub = rt.hub.subscribe()  # before the replay query, so nothing falls in between
    sub.task = asyncio.current_task()
    metrics.STREAMS_OPENED.inc()
    joined = False
    try:
        try:
            first, sub.replayed_upto = await _opening_frames(rt, cursor)
        except (OSError, SQLAlchemyError) as exc:
            log.warning("stream refused, database unavailable: %s", type(exc).__name__)
            await _refuse(rt, send, 503, "database-unavailable", 2)
            return
        if who is not None:
            joined = True
            await _join(rt, who, ip)
        await write_stream(sub, scope, send, receive, first, headers)
    except asyncio.CancelledError:
        if not sub.timed_out:
            raise
        # Closed by the watchdog: the client stopped reading. The server drops the socket.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        log.info("stream closed: client stopped reading")
    finally:
        rt.hub.unsubscribe(sub)
        for key in keys:
            rt.streams_per_key[key] -= 1
            if rt.streams_per_key[key] <= 0:
                del rt.streams_per_key[key]
        if joined and who is not None:
            rt.presence.closed(who)


def _who_and_where(
    rt: Runtime, scope: Scope, receive: Receive
) -> tuple[identity.Identity | None, str, int | None]:
    """The visitor, their address and the stream's cursor. Read here so that the Request
    (and what it parsed) is not kept for the stream's whole life: 10,000 streams hold
    10,000 of whatever their handler's frame holds."""
    request: Request[Any, Any, Any] = Request(scope, receive)
    who = identity.decode(request.cookies.get(identity.COOKIE_NAME), rt.settings.verifying_keys)
    ip = request.client.host if request.client else "unknown"
    cursor = params.first_cursor(
        request.headers.get("last-event-id"), request.query_params.get("last_event_id")
    )
    return who, ip, cursor


async def _join(rt: Runtime, who: identity.Identity, ip: str) -> None:
    """Record presence; a database hiccup must not cost the visitor their stream."""
    try:
        await asyncio.wait_for(rt.presence.opened(who, ip, rt.settings.rate_limit_per_minute), 5)
    except Exception as exc:
        log.warning("presence join failed: %s", type(exc).__name__)
