"""A stream request that stops reading: a slow or frozen client, for back-pressure tests."""

import asyncio
import fcntl
import socket
import struct
import termios
from collections.abc import Mapping
from typing import Self

from .rawhttp import HeaderMap, build_request, parse_head
from .sse import StreamClosed


class StalledStream:
    """A stream request whose socket is never read after the response head.

    Its receive buffer is made small before connecting (so the TCP window stays small), which
    makes the server's sends back up within a few kilobytes: a slow or frozen client.
    """

    def __init__(self, sock: socket.socket, status: int, headers: HeaderMap) -> None:
        self.sock = sock
        self.status = status
        self.headers = headers

    @classmethod
    async def open(
        cls,
        base_url: str,
        path: str = "/events",
        *,
        headers: Mapping[str, str] | None = None,
        cookies: Mapping[str, str] | str | None = None,
        rcvbuf: int = 4096,
        timeout: float = 10.0,
    ) -> Self:
        host, port, request = build_request(base_url, path, headers, cookies)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)

        async def handshake() -> Self:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, request)
            head = b""
            while b"\r\n\r\n" not in head:
                data = await loop.sock_recv(sock, 1)  # byte by byte: read nothing past the head
                if not data:
                    raise StreamClosed(f"connection closed during the response head: {head!r}")
                head += data
            status, response_headers = parse_head(head[:-4])
            return cls(sock, status, response_headers)

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
