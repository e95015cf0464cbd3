"""Writing one event stream: a plain ASGI send loop over a hub subscription.

Litestar's Stream over an async generator costs a task switch and a generator step per
event per stream; on this hot path (every event, every open stream) frames go straight
to `send`, already encoded once per event by the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from litestar.types import Receive, Scope, Send

from app.realtime.hub import Subscription
from app.realtime.writer import DRAINING, WAITING_ON_SOCKET

DISCONNECT_EXTENSION = "ripple.disconnect"


class DisconnectNotice:
    """A scope extension our HTTP protocol offers (app.httpprotocol): it tells the stream
    when the connection is lost. Without it a stream needs a second task, blocked in
    `receive()` for its whole life, only to hear `http.disconnect`; at 10,000 streams those
    tasks are a tenth of a worker's memory.

    Latched: a connection lost before the stream listens (during its replay query or its
    presence join) is reported as soon as it does."""

    __slots__ = ("_callback", "cycle", "is_lost")

    def __init__(self) -> None:
        self._callback: Callable[[], None] | None = None
        self.is_lost = False
        self.cycle: object = None  # the request's, once the server has made it

    def listen(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` when the connection is lost (at once if it already was); None
        stops listening."""
        self._callback = callback
        if callback is not None and self.is_lost:
            self._callback = None
            callback()

    def lost(self) -> None:
        self.is_lost = True
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


async def _watch_disconnect(receive: Receive, sub: Subscription) -> None:
    """The server reports a client that went away as `http.disconnect` (servers without
    our protocol's DisconnectNotice)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            sub.disconnect()
            return


async def write_stream(
    sub: Subscription,
    scope: Scope,
    send: Send,
    receive: Receive,
    first: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Send `headers` (app.web.security's STREAM kind) and `first`, then whatever the hub
    buffers, until closed or disconnected. The stream's task: it does what the writer's
    state asks of it (app.realtime.writer)."""
    notice: object = (scope.get("extensions") or {}).get(DISCONNECT_EXTENSION)
    watcher: asyncio.Task[None] | None = None
    if isinstance(notice, DisconnectNotice):
        notice.listen(sub.disconnect)
    else:
        watcher = asyncio.create_task(_watch_disconnect(receive, sub))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": first, "more_body": True})
        sub.attached(send)
        while True:
            await sub.wait()
            state = sub.state
            if state is WAITING_ON_SOCKET:
                await sub.finish_waiting_send()
            elif state is DRAINING:
                await sub.drain()
            else:  # CLOSING
                break
        if not sub.disconnected:
            # Server shutting down: end cleanly; the client reconnects (to another worker).
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        sub.close()  # before anything awaits: the hub must not write to a finished response
        sub.finished()  # drops a direct send still waiting: that frame is moot
        if isinstance(notice, DisconnectNotice):
            notice.listen(None)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
