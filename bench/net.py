"""Lean HTTP/1.1 clients on raw asyncio sockets: keep-alive pools and SSE streams.

One process drives thousands of sockets, so everything here is an `asyncio.Protocol`
with no task per request or per stream. `httptools` (the C parser uvicorn uses) does the
HTTP framing and de-chunking; the SSE parsing is ours and takes the data in place
(`bench/sse_conn.py`). Requests are formatted here too: h11 would cost more per request
than the rest of a fetch's client side, and the load sends one per event per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools
from support.rawhttp import event_stream_headers

from bench.sse_conn import SseConnection
from bench.sse_conn import now as now  # the one clock, for those importing it from here

HOST = "127.0.0.1"

# callback(status, body, sent_at, done_at); status 0 means the connection failed
Done = Callable[[int, bytes, float, float], None]


def request_bytes(
    method: str,
    path: str,
    port: int,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def stream_requests(port: int, cookies: list[str], cursor: int) -> list[bytes]:
    """One `GET /events` per cookie, opened as the page opens its stream (at the cursor)."""
    path = f"/events?last_event_id={cursor}"
    return [request_bytes("GET", path, port, event_stream_headers(cookie)) for cookie in cookies]


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def cookies(self) -> dict[str, str]:
        jar = {}
        for name, value in self.headers:
            if name.lower() == "set-cookie":
                pair = value.split(";", 1)[0]
                key, _, val = pair.partition("=")
                jar[key.strip()] = val.strip()
        return jar


class _Collector:
    """httptools callbacks for one whole response (used for set-up requests)."""

    def __init__(self) -> None:
        self.response = Response()
        self.parts: list[bytes] = []
        self.done = asyncio.get_running_loop().create_future()
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.response.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.response.body = b"".join(self.parts)
        if not self.done.done():
            self.done.set_result(self.response)


async def fetch(port: int, raw: bytes, timeout: float = 10.0) -> Response:
    """One request on a fresh connection (set-up and checks, not the measured path)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        collector = _Collector()
        writer.write(raw)
        deadline = time.monotonic() + timeout
        while not collector.done.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete answer from port {port}")
            data = await asyncio.wait_for(reader.read(65536), left)
            if not data:
                raise ConnectionError("connection closed before the answer was complete")
            collector.parser.feed_data(data)
        return collector.done.result()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# -- keep-alive pools -------------------------------------------------------------------


class _PooledConnection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, like a browser (no pipelining)."""

    __slots__ = (
        "_answered",
        "_body",
        "_done",
        "_heard",
        "_raw",
        "_sent",
        "_status",
        "parser",
        "pool",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._done: Done | None = None
        self._raw = b""
        self._sent = 0.0
        self._status = 0
        self._body: list[bytes] = []
        self._answered = 0  # requests answered on this connection
        self._heard = False  # any byte of the current answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, raw: bytes, done: Done) -> None:
        assert self.transport is not None
        self._done = done
        self._raw = raw
        self._body = []
        self._heard = False
        self._sent = now()
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        done, self._done = self._done, None
        keep = self.parser.should_keep_alive()
        self._answered += 1
        if done is not None:
            done(self._status, b"".join(self._body), self._sent, now())
        if keep:
            self.pool.idle_again(self)
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        done, self._done = self._done, None
        if done is not None and self._answered and not self._heard:
            # The server closed an idle keep-alive connection as we reused it: like a
            # browser, send the request again on another connection.
            self.pool.lost(self, failed=False)
            self.pool.retry(self._raw, done)
            return
        if done is not None:
            done(0, b"", self._sent, now())
        self.pool.lost(self, failed=done is not None)


class Pool:
    """A fixed number of keep-alive connections with a FIFO of waiting requests.

    Lost connections are replaced (a bounded number of times), so a server that closes a
    connection after an error does not shrink the pool for the rest of the run.
    """

    def __init__(self, port: int, size: int, max_reconnects: int = 50) -> None:
        self.port = port
        self.size = size
        self._idle: list[_PooledConnection] = []
        self._open: set[_PooledConnection] = set()
        self._waiting: deque[tuple[bytes, Done]] = deque()
        self._reconnects_left = max_reconnects
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors = 0

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _PooledConnection(self), HOST, self.port), 10
        )
        self._open.add(conn)
        self.idle_again(conn)

    async def open(self) -> Pool:
        await asyncio.gather(*(self._connect() for _ in range(self.size)))
        return self

    def submit(self, raw: bytes, done: Done) -> None:
        if self._idle:
            self._idle.pop().send(raw, done)
        else:
            self._waiting.append((raw, done))

    @property
    def backlog(self) -> int:
        return len(self._waiting)

    def idle_again(self, conn: _PooledConnection) -> None:
        if self._waiting:
            raw, done = self._waiting.popleft()
            conn.send(raw, done)
        else:
            self._idle.append(conn)

    def retry(self, raw: bytes, done: Done) -> None:
        if self._idle:
            self._idle.pop().send(raw, done)
        else:
            self._waiting.appendleft((raw, done))

    def lost(self, conn: _PooledConnection, failed: bool) -> None:
        """A connection closed: replace it (idle ones closed by the server's keep-alive
        timeout always; after a failed request only a bounded number of times)."""
        self._open.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        if self._closing:
            return
        if failed:
            self.errors += 1
        if not failed or self._reconnects_left > 0:
            self._reconnects_left -= failed
            task = asyncio.get_running_loop().create_task(self._replace())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif not self._open:  # nothing left to serve the queue: fail it
            while self._waiting:
                _, done = self._waiting.popleft()
                t = now()
                done(0, b"", t, t)

    async def _replace(self) -> None:
        await asyncio.sleep(0.05)
        with contextlib.suppress(OSError, TimeoutError):
            await self._connect()

    def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.close()
        self._open.clear()
        self._idle.clear()


# -- SSE streams ------------------------------------------------------------------------


class StreamSink:
    """Receives what every stream parses; the phases subclass it."""

    def on_activity(self, stream: SseStream, item_id: int, at: float) -> None:
        """An `activity` event."""

    def on_counter(self, stream: SseStream, at: float) -> None:
        """A `counter` event."""


class SseStream(SseConnection):
    """One load client's `GET /events`: counts frames and hands events to the sink."""

    __slots__ = ("events", "index", "sink")

    def __init__(self, index: int, request: bytes, sink: StreamSink) -> None:
        super().__init__(request)
        self.index = index
        self.sink = sink
        self.events = 0

    def on_frame(self, frame: bytes) -> None:
        # Events carry an id only (the contract), so one search per kind is enough; this
        # runs for every event at every client, the load generator's own hot path.
        self.events += 1
        if b"event: activity" in frame:
            data = frame[frame.rfind(b"data:") + 5 :].split(b"\n", 1)[0]
            self.sink.on_activity(self, int(data), self.heard)
        elif b"event: counter" in frame:
            self.sink.on_counter(self, self.heard)


async def open_streams(
    port: int,
    requests: list[bytes],
    sink: StreamSink,
    *,
    concurrency: int = 200,
    timeout: float = 120.0,
) -> tuple[list[SseStream], int]:
    """Open one stream per request (bounded concurrency); the streams and how many failed."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + timeout
    streams: list[SseStream] = []

    async def one(index: int, raw: bytes) -> bool:
        async with gate:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            stream = SseStream(index, raw, sink)
            streams.append(stream)
            try:
                await asyncio.wait_for(loop.create_connection(lambda: stream, HOST, port), left)
                status = await asyncio.wait_for(
                    stream.opened, max(0.1, deadline - time.monotonic())
                )
            except (OSError, TimeoutError):
                stream.close()
                return False
            return status == 200

    results = await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    streams.sort(key=lambda s: s.index)
    return streams, sum(1 for ok in results if not ok)
