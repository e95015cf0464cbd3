"""Writing one event stream: a plain ASGI send loop over a hub subscription.

Litestar's Stream over an async generator costs a task switch and a generator step per
event per stream; on this hot path (every event, every open stream) frames go straight
to `send`, already encoded once per event by the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from litestar.types import Receive, Send

from app import metrics
from app.realtime.hub import Subscription


async def _watch_disconnect(receive: Receive, sub: Subscription) -> None:
    """The server reports a client that went away as `http.disconnect`."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            sub.disconnected = True
            sub.close()
            return


async def pump(
    sub: Subscription,
    send: Send,
    receive: Receive,
    first: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Send `headers` (app.web.security's STREAM kind) and `first`, then whatever the hub
    buffers, until closed or disconnected."""
    watcher = asyncio.create_task(_watch_disconnect(receive, sub))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        sub.attach(send)
        while True:
            await sub.wait()
            if sub.closed:
                break
            await sub.finish_inflight()
            chunk, oldest = sub.take()
            if not chunk:
                continue
            sub.send_started = time.monotonic()
            sub.writing = True
            try:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:
                sub.writing = False
                sub.send_started = 0.0
            if sub.sampled and oldest:
                metrics.NOTIFY_TO_SEND.observe(time.monotonic() - oldest)
        sub.abandon_inflight()  # closed while a direct write waited: that frame is moot
        if not sub.disconnected:
            # Server shutting down: end cleanly; the client reconnects (to another worker).
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        sub.close()  # before anything awaits: the hub must not write to a finished response
        sub.abandon_inflight()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
