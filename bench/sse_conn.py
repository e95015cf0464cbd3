"""One `GET /events` as a lean `asyncio.Protocol`: the benchmark's and the soak's stream client.

One process holds up to 20,000 of these, so there is no task per stream and no h11 here:
`httptools` (the C parser uvicorn uses) frames HTTP and de-chunks, and the body is cut into
frames with two byte searches. What a frame means is the subclass's `on_frame`.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import httptools

now = time.perf_counter  # one clock for write send times and receive times


class SseConnection(asyncio.Protocol):
    """The response head (`opened` gets the status), then each frame of a 200 body, without
    its blank line, to `on_frame`; `heard` is when the last bytes arrived, `lost` completes
    when the connection is gone."""

    __slots__ = (
        "_buf",
        "closed",
        "heard",
        "lost",
        "opened",
        "parser",
        "request",
        "status",
        "transport",
    )

    def __init__(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.opened: asyncio.Future[int] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.closed = False
        self.heard = 0.0
        self._buf = b""

    def on_frame(self, frame: bytes) -> None:
        """One frame's lines, separated by LF (CRLF is turned into LF)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.heard = now()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.heard = now()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.opened.done():
            self.opened.set_result(self.status)

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            return
        buf = self._buf + body if self._buf else body
        if b"\r" in buf:  # Litestar's encoder separates lines with CRLF, Ripple with LF
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            self.on_frame(buf[start:end])
            start = end + 2
        self._buf = buf[start:]

    def on_message_complete(self) -> None:
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_result(0)
        if not self.lost.done():
            self.lost.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
