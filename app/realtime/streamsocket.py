"""What our HTTP protocol (app.httpprotocol) offers an event stream, as a scope extension.

Two things a stream otherwise pays for on every frame or for its whole life:
- hearing that the connection was lost: without this, a second task per stream waits in
  `receive()` for `http.disconnect` (at 10,000 streams those tasks are a tenth of a
  worker's memory);
- writing a frame: the ASGI `send` builds a message dict, a coroutine and the chunk's
  framing for every stream; here the frame is framed once per event and written to the
  transport, which is the syscall the server's `send` ends in anyway. Anything unusual
  (the socket full, the client gone, the response not yet started) returns False and the
  caller uses `send`, so flow control and errors stay the server's.

Under another server (granian, the test client) there is no extension and streams use the
ASGI `send` and `receive` alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

STREAM_SOCKET_EXTENSION = "ripple.stream_socket"


class _Cycle(Protocol):
    """The parts of uvicorn's RequestResponseCycle read here."""

    chunked_encoding: bool | None
    disconnected: bool
    response_started: bool
    response_complete: bool


class _Flow(Protocol):
    write_paused: bool


class _Framed:
    """The newest frame and its chunked framing: the hub offers one frame object to every
    stream, so it is framed once per event."""

    frame: bytes = b""
    chunk: bytes = b"0\r\n\r\n"


_framed = _Framed()


def _chunk_of(frame: bytes) -> bytes:
    if frame is not _framed.frame:
        _framed.frame = frame
        _framed.chunk = b"%x\r\n%b\r\n" % (len(frame), frame)
    return _framed.chunk


class StreamSocket:
    """One stream's connection, as the protocol offers it (see the module docstring)."""

    __slots__ = ("cycle", "flow", "on_lost", "transport")

    def __init__(self, transport: asyncio.Transport, flow: _Flow) -> None:
        self.transport = transport
        self.flow = flow
        self.cycle: _Cycle | None = None  # set once the server has made the request's cycle
        self.on_lost: Callable[[], None] | None = None

    def lost(self) -> None:
        """From the protocol's connection_lost."""
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()

    def write(self, frame: bytes) -> bool:
        """Write a body frame at once; False (nothing written) if `send` must do it."""
        cycle = self.cycle
        if (
            cycle is None
            or not cycle.response_started
            or cycle.response_complete
            or cycle.disconnected
            or self.flow.write_paused
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(_chunk_of(frame) if cycle.chunked_encoding else frame)
        return True
