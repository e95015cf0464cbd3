"""A stream request that stops reading: a slow or frozen client, for back-pressure tests.

It keeps a plain non-blocking socket (not a stream reader, which would read ahead) and reads
the response head byte by byte, so nothing past the head leaves the kernel's buffer.
"""

import asyncio
import fcntl
import socket
import struct
import termios
from collections.abc import Mapping
from typing import Self

from .rawhttp import ClientSide, Cookies, host_and_port
from .sse import StreamClosed, open_stream_request


class StalledStream:
    """A stream request whose socket is never read after the response head.

    Its receive buffer is made small before connecting (so the TCP window stays small), which
    makes the server's sends back up within a few kilobytes: a slow or frozen client.
    """

    def __init__(self, sock: socket.socket, http: ClientSide) -> None:
        assert http.status is not None
        self.sock = sock
        self.http = http  # reads on from the head: `http.feed(data)` gives the body, de-chunked
        self.status = http.status
        self.headers = http.headers

    @classmethod
    async def open(
        cls,
        base_url: str,
        path: str = "/events",
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Cookies = None,
        rcvbuf: int = 4096,
        timeout: float = 10.0,
    ) -> Self:
        host, port = host_and_port(base_url)
        http = ClientSide()
        request = open_stream_request(http, base_url, path, headers, cookies)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)

        async def handshake() -> Self:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, request)
            while http.status is None:
                data = await loop.sock_recv(sock, 1)  # byte by byte: read nothing past the head
                if not data:
                    raise StreamClosed("connection closed during the response head")
                http.feed(data)
            return cls(sock, http)

        try:
            return await asyncio.wait_for(handshake(), timeout)
        except BaseException:
            sock.close()
            raise

    def queued_bytes(self) -> int:
        """Bytes the kernel holds for us, unread (FIONREAD)."""
        buf = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        value: int = struct.unpack("i", buf)[0]
        return value

    def connection_alive(self) -> bool:
        """False once the server has closed or reset the connection (peeks without reading
        stream data: a FIN or RST is visible through MSG_PEEK only at the end of the data, so
        this is reliable only when nothing is queued)."""
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return bool(data)

    def close(self) -> None:
        self.sock.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
