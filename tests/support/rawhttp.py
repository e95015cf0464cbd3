"""HTTP/1.1 framing for the tests' socket clients, done by h11: the request they send, and the
response they read (head, de-chunked body, end) from whatever bytes arrived, split anywhere.

The clients keep the socket (to stall, reset or time it); h11 only turns bytes into events.
"""

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import h11

HeaderMap = dict[str, str]
Cookies = Mapping[str, str] | str | None


def cookie_header(cookies: Cookies) -> str | None:
    """A ``Cookie`` header value from a jar or a ready header (None when empty)."""
    if cookies is None or isinstance(cookies, str):
        return cookies or None
    return "; ".join(f"{name}={value}" for name, value in cookies.items()) or None


def event_stream_headers(cookie: str | None, last_event_id: str | None = None) -> dict[str, str]:
    """What a page's ``EventSource`` sends when it opens (or reopens) its stream."""
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if cookie:
        headers["Cookie"] = cookie
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    return headers


def host_and_port(base_url: str) -> tuple[str, int]:
    url = urlsplit(base_url)
    return url.hostname or "127.0.0.1", url.port or 80


class ClientSide:
    """The client side of one HTTP/1.1 connection: request bytes out, response events in.

    After `feed`, `status` and `headers` are set once the head is in, and `ended` once the
    body is complete; bytes past the end (a pipelined answer) wait for `expect_response`.
    """

    def __init__(self) -> None:
        self._conn = h11.Connection(h11.CLIENT)
        self.status: int | None = None
        self.headers: HeaderMap = {}
        self.ended = False

    def request(self, method: str, target: str, headers: Mapping[str, str]) -> bytes:
        """The bytes of a request without a body, and h11 now waits for its answer.

        Text goes out as latin-1 (h11 would take ASCII only): hostile tests send any byte
        that HTTP allows in a target or a header value."""
        self._next_cycle()
        fields = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
        ]
        request = h11.Request(method=method, target=target.encode("latin-1"), headers=fields)
        return self._conn.send(request) + (self._conn.send(h11.EndOfMessage()) or b"")

    def expect_response(self, method: str = "GET") -> None:
        """Wait for the answer to a request the test wrote itself, byte for byte."""
        self.request(method, "/", {"Host": "127.0.0.1"})

    def _next_cycle(self) -> None:
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
        self.status, self.headers, self.ended = None, {}, False

    def feed(self, data: bytes) -> bytes:
        """Take bytes that arrived (``b""``: only what is buffered); return the body bytes
        they complete, de-chunked. Raises ``h11.RemoteProtocolError`` on a broken answer."""
        if data:
            self._conn.receive_data(data)
        body = bytearray()
        while not self.ended:
            event = self._conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = _header_map(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.ended = True
        return bytes(body)


def _header_map(headers: Iterable[tuple[bytes, bytes]]) -> HeaderMap:
    """Lower-cased names (as h11 gives them); repeated headers joined with ", "."""
    found: HeaderMap = {}
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        found[name] = f"{found[name]}, {value}" if name in found else value
    return found
