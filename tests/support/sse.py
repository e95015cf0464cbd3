"""A server-sent events client over a raw socket, so tests see exactly what the server sends.

An HTTP client library would hide the connection (partial frames, when it really closed, a
reset); this client keeps the socket, lets h11 frame HTTP/1.1 and de-chunk the body, and
parses frames as the SSE specification says a browser does: ``event``/``id``/``data``/
``retry`` fields, ``:`` comments ignored, a frame without data not dispatched. A background
task reads the socket all the time, as a browser does, so a test that looks away for a while
is not a slow client.
"""

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Self

import h11

from .rawhttp import ClientSide, Cookies, cookie_header, event_stream_headers, host_and_port
from .sse_parse import FrameParser, SSEEvent, Utf8Decoder

__all__ = ["FrameParser", "SSEClient", "SSEEvent", "StreamClosed", "open_stream_request"]


class StreamClosed(Exception):
    """The server ended the stream (or the connection broke) before the awaited event."""


def named(name: str, data: str | None = None) -> Callable[[SSEEvent], bool]:
    """A predicate for `wait_for`/`collect`: events called `name` (with `data`, if given)."""
    return lambda ev: ev.event == name and (data is None or ev.data == data)


class SSEClient:
    """An open ``GET`` of an event stream. Use ``async with SSEClient.open(...) as stream``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        http: ClientSide,
        first_body: bytes,
    ) -> None:
        assert http.status is not None
        self.status = http.status
        self.headers = http.headers
        self.events: list[SSEEvent] = []  # every event received, in order
        self.body = bytearray()  # the de-chunked body, kept only when status is not 200
        self.parser = FrameParser()
        self._http = http
        self._reader = reader
        self._writer = writer
        self._queue: asyncio.Queue[SSEEvent | None] = asyncio.Queue()
        self._closed = asyncio.Event()
        self.error: BaseException | None = None
        # The server ended the body itself (a chunked stream's last chunk arrived), rather
        # than the connection being cut.
        self.ended_cleanly = False
        self._task = asyncio.create_task(self._read(first_body))

    @classmethod
    async def connect(
        cls,
        base_url: str,
        path: str = "/events",
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Cookies = None,
        timeout: float = 10.0,
    ) -> Self:
        """Send the request and read the response head; the body is read in the background."""
        host, port = host_and_port(base_url)
        http = ClientSide()
        request = open_stream_request(http, base_url, path, headers, cookies)

        async def handshake() -> Self:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request)
                await writer.drain()
                first_body = b""
                while http.status is None:
                    data = await reader.read(65536)
                    if not data:
                        raise StreamClosed("connection closed during the response head")
                    first_body += http.feed(data)
            except BaseException:
                writer.close()
                raise
            return cls(reader, writer, http, first_body)

        return await asyncio.wait_for(handshake(), timeout)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        base_url: str,
        path: str = "/events",
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Cookies = None,
        timeout: float = 10.0,
    ) -> AsyncIterator[Self]:
        client = await cls.connect(
            base_url, path, headers=headers, cookies=cookies, timeout=timeout
        )
        try:
            yield client
        finally:
            await client.aclose()

    # -- background reading ----------------------------------------------------------------

    async def _read(self, body: bytes) -> None:
        text = Utf8Decoder()
        try:
            while True:
                if body:
                    self._take(body, text)
                if self._http.ended:
                    self.ended_cleanly = True
                    break
                data = await self._reader.read(65536)
                if not data:
                    break
                body = self._http.feed(data)
        except (OSError, h11.RemoteProtocolError) as exc:
            self.error = exc
        finally:
            self._closed.set()
            self._queue.put_nowait(None)

    def _take(self, body: bytes, text: Utf8Decoder) -> None:
        if self.status != 200:
            self.body += body
            return
        for event in self.parser.feed(text.decode(body)):
            self.events.append(event)
            self._queue.put_nowait(event)

    # -- waiting ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the server has ended the stream (events may still be queued)."""
        return self._closed.is_set()

    async def next_event(self, timeout: float = 10.0) -> SSEEvent:
        """The next event not yet taken; ``TimeoutError`` or ``StreamClosed`` otherwise."""
        if self._queue.empty() and self._closed.is_set():
            raise StreamClosed(self._closed_reason())
        try:
            event = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no event within {timeout} s; {self._recent()}") from None
        if event is None:
            raise StreamClosed(self._closed_reason())
        return event

    async def wait_for(
        self, predicate: Callable[[SSEEvent], bool], timeout: float = 10.0
    ) -> SSEEvent:
        """Take events until one matches ``predicate``; return it. Skipped events stay in
        ``events``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching event within {timeout} s; {self._recent()}")
            event = await self.next_event(timeout=left)
            if predicate(event):
                return event

    async def wait_for_event(
        self, name: str, data: str | None = None, timeout: float = 10.0
    ) -> SSEEvent:
        """Shorthand: the next event named ``name`` (with ``data``, if given)."""
        return await self.wait_for(named(name, data), timeout)

    async def collect(
        self,
        duration: float,
        *,
        count: int | None = None,
        predicate: Callable[[SSEEvent], bool] | None = None,
    ) -> list[SSEEvent]:
        """Matching events taken for ``duration`` seconds, or until ``count`` of them arrived,
        or until the stream ends."""
        found: list[SSEEvent] = []
        deadline = time.monotonic() + duration
        while count is None or len(found) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                event = await self.next_event(timeout=left)
            except (TimeoutError, StreamClosed):
                break
            if predicate is None or predicate(event):
                found.append(event)
        return found

    async def wait_closed(self, timeout: float = 10.0) -> None:
        """Wait until the server ends the stream."""
        try:
            await asyncio.wait_for(self._closed.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"stream still open after {timeout} s") from None

    async def read_body(self, timeout: float = 10.0) -> bytes:
        """The whole body of a non-200 answer (e.g. a ``503``)."""
        await self.wait_closed(timeout)
        return bytes(self.body)

    def _closed_reason(self) -> str:
        return f"stream closed (error: {self.error!r}); {self._recent()}"

    def _recent(self) -> str:
        tail = [f"{ev.event}:{ev.data}" for ev in self.events[-5:]]
        return f"{len(self.events)} events received, last {tail}"

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 5)

    def abort(self) -> None:
        """Drop the connection with a TCP reset (a client that vanished, not one that left)."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._task.cancel()
        self._writer.transport.abort()


def open_stream_request(
    http: ClientSide,
    base_url: str,
    path: str,
    headers: Mapping[str, str] | None,
    cookies: Cookies,
) -> bytes:
    """The ``GET`` that opens a stream, as a page's ``EventSource`` sends it (plus `headers`)."""
    host, port = host_and_port(base_url)
    fields = {"Host": f"{host}:{port}", **event_stream_headers(cookie_header(cookies))}
    return http.request("GET", path, {**fields, **(headers or {})})
