"""One raw HTTP/1.1 connection: send exact bytes, read responses, notice when it is closed.

For tests of the server's edge (head size, head deadline, keep-alive, pipelining), where an
HTTP library would normalise, buffer or retry what is sent. What comes back is read by h11.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

from .rawhttp import ClientSide, HeaderMap

CLOSED = (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError)


@dataclass
class RawResponse:
    status: int
    headers: HeaderMap
    body: bytes


def canonical_head(path: str, headers: list[tuple[str, str]], method: str = "GET") -> bytes:
    """A request head in the canonical form: request line, "name: value" lines, empty line.

    Written by hand: the head-size tests need its exact length, whatever h11 would add."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.opened_at = time.monotonic()
        self._http = ClientSide()

    @classmethod
    async def open(cls, base_url: str, timeout: float = 5.0) -> Self:
        url = urlsplit(base_url)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(url.hostname, url.port), timeout
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self, timeout: float = 10.0, method: str = "GET") -> RawResponse:
        """The next response (to a request of `method`), with its body de-chunked; one
        pipelined behind it stays buffered for the next call."""
        http = self._http
        http.expect_response(method)

        async def read() -> RawResponse:
            body = bytearray(http.feed(b""))
            while not http.ended:
                data = await self.reader.read(65536)
                if not data:
                    raise asyncio.IncompleteReadError(bytes(body), None)
                body += http.feed(data)
            assert http.status is not None
            return RawResponse(http.status, http.headers, bytes(body))

        return await asyncio.wait_for(read(), timeout)

    async def wait_closed(self, timeout: float) -> float | None:
        """Seconds since opening at which the server closed the connection (whatever it
        sent before is discarded), or None if it is still open after `timeout` s."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return None
        except CLOSED:
            pass
        return time.monotonic() - self.opened_at

    def close(self) -> None:
        self.writer.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
