"""A server-sent events client over a raw socket, so tests see exactly what the server sends.

An HTTP library would hide the framing (chunking, partial frames, when the connection really
closed); this client speaks HTTP/1.1 itself, de-chunks the body and parses frames as the SSE
specification says a browser does: ``event``/``id``/``data``/``retry`` fields, ``:`` comments
ignored, a frame without data not dispatched. A background task reads the socket all the time,
as a browser does, so a test that looks away for a while is not a slow client.
"""

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Self

from .rawhttp import HeaderMap, build_request, parse_head
from .sse_parse import ChunkedDecoder, FrameParser, SSEEvent, Utf8Decoder

__all__ = ["ChunkedDecoder", "FrameParser", "SSEClient", "SSEEvent", "StreamClosed"]


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
        status: int,
        headers: HeaderMap,
        leftover: bytes,
    ) -> None:
        self.status = status
        self.headers = headers
        self.events: list[SSEEvent] = []  # every event received, in order
        self.body = bytearray()  # the de-chunked body, kept only when status is not 200
        self.parser = FrameParser()
        self._reader = reader
        self._writer = writer
        self._queue: asyncio.Queue[SSEEvent | None] = asyncio.Queue()
        self._closed = asyncio.Event()
        self.error: BaseException | None = None
        # The server ended the body itself (a chunked stream's last chunk arrived), rather
        # than the connection being cut.
        self.ended_cleanly = False
        self._task = asyncio.create_task(self._read(leftover))

    @classmethod
    async def connect(
        cls,
        base_url: str,
        path: str = "/events",
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | str | None = None,
        timeout: float = 10.0,
    ) -> Self:
        """Send the request and read the response head; the body is read in the background."""
        host, port, request = build_request(base_url, path, headers, cookies)

        async def handshake() -> Self:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except BaseException:
                writer.close()
                raise
            status, response_headers = parse_head(head[:-4])
            return cls(reader, writer, status, response_headers, b"")

        return await asyncio.wait_for(handshake(), timeout)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        base_url: str,
        path: str = "/events",
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | str | None = None,
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

    async def _read(self, leftover: bytes) -> None:
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length_header = self.headers.get("content-length")
        remaining = int(length_header) if length_header and not chunked else None
        decoder = ChunkedDecoder() if chunked else None
        text = Utf8Decoder()
        data = leftover
        try:
            while True:
                if data:
                    if decoder is not None:
                        body = decoder.feed(data)
                    elif remaining is not None:
                        body, remaining = data[:remaining], remaining - len(data[:remaining])
                    else:
                        body = data
                    self._take(text.decode(body))
                    if (decoder is not None and decoder.done) or remaining == 0:
                        self.ended_cleanly = True
                        break
                data = await self._reader.read(65536)
                if not data:
                    break
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            self.error = exc
        finally:
            self._closed.set()
            self._queue.put_nowait(None)

    def _take(self, text: str) -> None:
        if self.status != 200:
            self.body += text.encode()
            return
        for event in self.parser.feed(text):
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
