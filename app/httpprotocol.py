"""The HTTP/1.1 protocol the server runs: uvicorn's httptools protocol with edge limits,
items from memory and the streams' disconnect notice.

uvicorn 0.54 over httptools bounds neither the size of a request's head (request line plus
headers) nor the time it may take to arrive: its keep-alive timer is armed only after a response
and cancelled by the next byte, and a new connection has no timer at all. A client could hold a
connection, and memory, for ever by sending a header a byte at a time (slowloris), or send
megabytes of headers. This subclass adds:

- a cap on a request's head (``RIPPLE_MAX_HEADER_BYTES``): over it, ``431`` and the connection
  is closed;
- a deadline for a head to arrive (``RIPPLE_HEADER_TIMEOUT_SECONDS``), counted from the
  connection's opening for its first request and from the first byte of each later one (the
  idle time between requests stays uvicorn's keep-alive timeout): past it, the connection is
  closed without an answer;
- the security headers every Ripple response carries on the answers it writes itself (``400``
  for a malformed request, ``431``);
- cached feed items answered from memory, with no ASGI cycle (``_answer_from_memory``: the
  front door builds the answer, this class writes it);
- a ``DisconnectNotice`` for each event stream (app.realtime.stream), so a stream hears of
  a lost connection without a task of its own waiting in ``receive()``.

The deadline runs only while a head is arriving and no earlier response on the connection is
still being sent: once the headers are in, the request is the app's (an event stream lasting
hours included). The normal path costs a few attribute writes per request and one timer per
connection; a request's own timer is armed only when its head spans more than one read.

uvicorn's own options do not fit: ``timeout_keep_alive`` covers only the idle time after a
response; ``limit_concurrency`` answers 503 to everyone once slow connections fill it (and would
cap event streams); ``h11_max_incomplete_event_size`` applies only to the h11 protocol, which
the launcher never selects (it always runs this class).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app import metrics
from app.config import Settings
from app.realtime import DISCONNECT_EXTENSION, DisconnectNotice
from app.web.frontdoor import FrontDoor
from app.web.security import Kind, kind_pairs

TOO_LARGE_MESSAGE = "Request header fields too large."
INVALID_MESSAGE = "Invalid HTTP request received."


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_header_bytes: int
    header_timeout_seconds: float
    error_headers: tuple[tuple[bytes, bytes], ...]  # an error's, security headers included


@functools.cache
def edge_limits() -> EdgeLimits:
    """Read once per worker process from the environment it inherited from the launcher."""
    settings = Settings.from_env()
    return EdgeLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout_seconds=settings.header_timeout_seconds,
        error_headers=kind_pairs(Kind.ERROR, settings.production),
    )


class _DefaultHead:
    """The server's default header list (replaced each second, for `date`), encoded."""

    source: object = None
    encoded = b""


_default_head = _DefaultHead()


class _EdgeState:
    """One connection's state for the edge limits, answers from memory and streams."""

    __slots__ = (
        "answered_here",
        "door",
        "head_begun_here",
        "head_first",
        "head_more",
        "head_open",
        "head_timer",
        "limits",
        "notices",
        "read_length",
        "too_large",
    )

    def __init__(self, limits: EdgeLimits, door: FrontDoor | None) -> None:
        self.limits = limits
        self.door = door  # the app, when it can answer items from memory
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_open = False  # a request head is awaited or arriving
        self.head_begun_here = False  # ... and it began in the read being parsed
        self.head_first = 0  # length of the read in which the head began
        self.head_more = 0  # length of later reads, all of them head bytes
        self.read_length = 0  # length of the read being parsed
        self.too_large = False
        self.answered_here = False  # this request was answered from memory
        self.notices: list[DisconnectNotice] = []  # the streams' on this connection


def _answered(notice: DisconnectNotice) -> bool:
    cycle = notice.cycle
    return cycle is not None and bool(getattr(cycle, "response_complete", False))


class HeadTooLarge(Exception):
    """Raised inside the parser's callback to stop parsing a head over the cap."""


class EdgeLimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a cap on request heads and a deadline for them."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # Our state in one slotted object: uvicorn's protocol has 28 attributes, and past
        # 30 CPython stops sharing an instance dict's keys between instances, which cost
        # every connection (every open stream) about 1.3 KiB more.
        app = config.loaded_app
        self._edge = _EdgeState(edge_limits(), app if isinstance(app, FrontDoor) else None)

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._edge.head_open = True  # a connection that sends nothing has the same deadline
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)
        for notice in self._edge.notices:
            notice.lost()

    def data_received(self, data: bytes) -> None:
        """As uvicorn's, plus the head's size and deadline once the read is parsed."""
        self._unset_keepalive_if_required()
        self._edge.read_length = len(data)
        self._edge.head_begun_here = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._edge.too_large:  # raised from on_headers_complete below
                self._refuse_too_large()
            else:
                self.logger.warning(INVALID_MESSAGE)
                self.send_400_response(INVALID_MESSAGE)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._edge.head_open:
            self._head_still_arriving()
        elif not (self._edge.head_timer or self._answering() or self.timeout_keep_alive_task):
            # Bytes that began no request: blank lines between requests (the parser skips
            # them) or the rest of a body already answered. They cancelled the keep-alive
            # timer above, so the wait for the next head starts now.
            self._arm_head_timer()

    def _head_still_arriving(self) -> None:
        if not self._edge.head_begun_here:
            # Every byte of this read belongs to the head. The read the head began in is not
            # counted here (it may hold an earlier request's body): the parser holds at most
            # the cap plus two reads before this refuses.
            self._edge.head_more += self._edge.read_length
            if self._edge.head_more > self._edge.limits.max_header_bytes:
                self._refuse_too_large()
                return
        if self._edge.head_timer is None and not self._answering():
            self._arm_head_timer()

    def _answering(self) -> bool:
        """An earlier request on this connection is still being answered (a pipelined head
        waits for it, and reading may be paused: its deadline starts when it is done)."""
        return self.cycle is not None and not self.cycle.response_complete

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A request pipelined behind one answered from memory: that answer armed the idle
        # timer, which must not run while this one is being read or answered.
        self._unset_keepalive_if_required()
        self._edge.answered_here = False
        self._edge.head_open = True
        self._edge.head_begun_here = True
        self._edge.head_first = self._edge.read_length
        self._edge.head_more = 0

    def on_headers_complete(self) -> None:
        self._edge.head_open = False
        self._cancel_head_timer()
        # An upper bound of the head's size from the reads it spans; the exact count is
        # needed only when that bound is over the cap.
        bound = self._edge.head_first + self._edge.head_more
        if not self._edge.head_begun_here:
            bound += self._edge.read_length
        cap = self._edge.limits.max_header_bytes
        if bound > cap and self._head_size() > cap:
            self._edge.too_large = True
            raise HeadTooLarge
        if self._edge.door is not None and self._answer_from_memory(self._edge.door):
            return
        if not self._opens_stream():
            super().on_headers_complete()
            return
        # A stream hears of a lost connection from us. Notices of requests answered since
        # (refused streams, ended ones) are dropped, so a long connection keeps few.
        notices = self._edge.notices = [n for n in self._edge.notices if not _answered(n)]
        notice = DisconnectNotice()
        notices.append(notice)
        extensions: dict[str, Any] = {DISCONNECT_EXTENSION: notice}  # ASGI types: dicts
        self.scope["extensions"] = extensions
        super().on_headers_complete()
        notice.cycle = self.cycle

    def _opens_stream(self) -> bool:
        url = self.url
        return (url == b"/events" or url.startswith(b"/events?")) and (
            self.parser.get_method() == b"GET"
        )

    def on_body(self, body: bytes) -> None:
        if not self._edge.answered_here:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._edge.answered_here:
            super().on_message_complete()

    def _head_size(self) -> int:
        """The head's bytes as sent in canonical form: "METHOD URL HTTP/1.1", then
        "name: value" lines, each ending in CRLF, then an empty line."""
        request_line = len(self.parser.get_method()) + len(self.url) + len("  HTTP/1.1\r\n")
        size = request_line + len("\r\n")
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        return size

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A head that arrived (in part) while this response was sent gets its deadline now.
        if (
            self._edge.head_open
            and self._edge.head_timer is None
            and not self._answering()
            and not self.transport.is_closing()
        ):
            self._arm_head_timer()

    # -- feed items answered from memory ------------------------------------------------------

    def _answer_from_memory(self, door: FrontDoor) -> bool:
        """Answer a cached feed item here, with no ASGI cycle; False to go the usual way.

        Every event makes every open page fetch its item, and uvicorn's cycle (scope, task,
        two sends) costs several times the answer itself. The front door decides and builds
        the answer (`FrontDoor.item_from_memory`); only plain keep-alive HTTP/1.1 requests
        on an idle connection are taken, so ordering, pipelining and closing stay uvicorn's.
        """
        parser = self.parser
        method = parser.get_method()
        if method != b"GET" and method != b"HEAD":
            return False
        if self._answering() or self.pipeline or self.transport.is_closing():
            return False
        if self.flow.write_paused:  # the client is not reading: the usual way waits for it
            return False
        if parser.get_http_version() != "1.1" or not parser.should_keep_alive():
            return False
        if parser.should_upgrade():  # uvicorn's upgrade handling needs its own way in
            return False
        answer = door.item_from_memory(self.url, self.headers, method == b"HEAD")
        if answer is None:
            return False
        status, rest = answer
        self.transport.write(STATUS_LINE[status] + self._default_head() + rest)
        self._edge.answered_here = True
        metrics.ITEMS_IN_PROTOCOL.inc()
        self.on_response_complete()
        return True

    def _default_head(self) -> bytes:
        """The server's default headers (`date`), encoded once per second they change."""
        current = self.server_state.default_headers
        if _default_head.source is not current:
            _default_head.source = current
            lines = [name + b": " + value + b"\r\n" for name, value in current]
            _default_head.encoded = b"".join(lines)
        return _default_head.encoded

    # -- the deadline --------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        timeout = self._edge.limits.header_timeout_seconds
        self._edge.head_timer = self.loop.call_later(timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._edge.head_timer is not None:
            self._edge.head_timer.cancel()
            self._edge.head_timer = None

    def _head_timed_out(self) -> None:
        self._edge.head_timer = None
        if not self.transport.is_closing():
            timeout = self._edge.limits.header_timeout_seconds
            self.logger.debug("request head not complete in %s s: closed", timeout)
            self.transport.close()

    # -- answers written by the protocol itself ------------------------------------------------

    def _refuse_too_large(self) -> None:
        cap = self._edge.limits.max_header_bytes
        self.logger.warning("request head over %d bytes: answered 431", cap)
        self._answer_and_close(431, TOO_LARGE_MESSAGE)

    def send_400_response(self, msg: str) -> None:
        self._answer_and_close(400, msg)

    def _answer_and_close(self, status: int, message: str) -> None:
        """A short plain-text answer with the security headers, then close. If an earlier
        response on this connection is still being sent, an answer would land inside it: the
        connection is only closed."""
        if self.transport.is_closing():
            return
        if not self._answering():
            body = (message + "\n").encode("ascii")
            head = [STATUS_LINE[status]]
            pairs = [
                *self.server_state.default_headers,
                *self._edge.limits.error_headers,
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ]
            head += [name + b": " + value + b"\r\n" for name, value in pairs]
            self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()
