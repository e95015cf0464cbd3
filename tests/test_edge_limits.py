"""The server's edge, attacked over raw sockets on a running instance (two workers): request
heads over the cap are refused, heads that never finish arriving (slowloris) are cut off, and
none of it touches open event streams, keep-alive or pipelining.

The head deadline is shortened to HEADER_TIMEOUT seconds through the environment, which the
launcher's workers inherit: connections spread over both workers are all held to it. The head
cap is the default.
"""

import asyncio
import re
import time
from collections.abc import Iterator

import pytest
from support.rawconn import RawConnection, RawResponse, canonical_head
from support.server import AppServer
from support.sse import SSEClient, named
from support.visitors import Visitor

from app.config import ConfigError, Settings
from app.web.security import SECURITY_HEADERS

HEADER_TIMEOUT = 2.0
CAP = Settings.from_env({"DATABASE_URL": "postgresql:///x"}).max_header_bytes  # the default
SLACK = 10.0  # a loaded machine may be late to close; never early
CONNECTIONS = 6  # spread over both workers


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    app = AppServer(
        database_url,
        {"RIPPLE_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT)},
        workers=2,
        log_dir=tmp_path_factory.mktemp("edge-server"),
        startup_timeout=60,
    )
    try:
        yield app.start()
    finally:
        app.stop()


def request_of_size(size: int, path: str = "/fragments/counter") -> bytes:
    """A canonical GET head of exactly `size` bytes, padded with one header."""
    headers = [("Host", "127.0.0.1"), ("Accept", "text/html"), ("X-Pad", "")]
    padding = size - len(canonical_head(path, headers))
    assert padding >= 0
    headers[-1] = ("X-Pad", "p" * padding)
    head = canonical_head(path, headers)
    assert len(head) == size
    return head


def plain_get(path: str = "/fragments/counter") -> bytes:
    return canonical_head(path, [("Host", "127.0.0.1"), ("Accept", "text/html")])


def assert_security_headers(response: RawResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)


async def assert_still_serving(server: AppServer, pids: list[int]) -> None:
    for _ in range(2 * CONNECTIONS):
        async with await RawConnection.open(server.base_url) as conn:
            await conn.send(plain_get())
            assert (await conn.read_response()).status == 200
    assert server.worker_pids() == pids  # no worker died or was replaced


# -- the head's size -------------------------------------------------------------------------


async def test_a_head_at_the_cap_is_served(server: AppServer) -> None:
    async with await RawConnection.open(server.base_url) as conn:
        await conn.send(request_of_size(CAP))
        response = await conn.read_response()
        assert response.status == 200
        # and the connection stays usable
        await conn.send(plain_get())
        assert (await conn.read_response()).status == 200


async def test_a_head_one_byte_over_the_cap_gets_431_with_the_security_headers(
    server: AppServer,
) -> None:
    pids = server.worker_pids()
    for _ in range(CONNECTIONS):
        async with await RawConnection.open(server.base_url) as conn:
            await conn.send(request_of_size(CAP + 1))
            response = await conn.read_response()
            assert response.status == 431
            assert response.headers["connection"] == "close"
            assert response.headers["content-type"].startswith("text/plain")
            assert response.headers["cache-control"] == "no-store"
            assert response.body == b"Request header fields too large.\n"
            assert_security_headers(response)
            assert await conn.wait_closed(5) is not None
    await assert_still_serving(server, pids)


async def test_eight_mebibytes_of_header_are_refused_early(server: AppServer) -> None:
    """An endless header line is cut off near the cap, long before it ends."""
    pids = server.worker_pids()
    piece = b"a" * 65536
    async with await RawConnection.open(server.base_url) as conn:
        await conn.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        refused = False
        try:
            async with asyncio.timeout(30):
                while sent < 8 * 1024 * 1024:
                    await conn.send(piece)
                    sent += len(piece)
        except (ConnectionResetError, BrokenPipeError):
            refused = True
        if not refused:  # the kernel's buffers took it all: the answer must be a refusal
            try:
                response = await conn.read_response()
                assert response.status == 431, response
            except (ConnectionResetError, asyncio.IncompleteReadError):
                pass  # closed with our bytes unread: a reset, which may swallow the 431
        assert await conn.wait_closed(5) is not None
    await assert_still_serving(server, pids)


async def test_a_long_url_counts_towards_the_cap(server: AppServer) -> None:
    async with await RawConnection.open(server.base_url) as conn:
        path = "/fragments/counter?" + "q=1&" * (CAP // 4)
        await conn.send(canonical_head(path, [("Host", "127.0.0.1")]))
        assert (await conn.read_response()).status == 431


async def test_a_malformed_request_gets_400_with_the_security_headers(server: AppServer) -> None:
    async with await RawConnection.open(server.base_url) as conn:
        await conn.send(b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n")
        response = await conn.read_response()
        assert response.status == 400
        assert response.body == b"Invalid HTTP request received.\n"
        assert_security_headers(response)
        assert await conn.wait_closed(5) is not None


# -- the head's deadline ---------------------------------------------------------------------


async def drip(conn: RawConnection, prefix: bytes) -> float | None:
    """Send `prefix`, then one more byte of a header value a second, until the server
    closes the connection (seconds since opening) or HEADER_TIMEOUT + SLACK pass (None)."""
    try:
        await conn.send(prefix)
        deadline = time.monotonic() + HEADER_TIMEOUT + SLACK
        while time.monotonic() < deadline:
            closed = await conn.wait_closed(1.0)
            if closed is not None:
                return closed
            await conn.send(b"x")
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - conn.opened_at
    return None


async def test_a_drip_fed_head_is_closed_once_the_deadline_passes(server: AppServer) -> None:
    conns = [await RawConnection.open(server.base_url) for _ in range(CONNECTIONS)]
    try:
        prefix = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        closed = await asyncio.gather(*(drip(conn, prefix) for conn in conns))
    finally:
        for conn in conns:
            conn.close()
    for at in closed:
        assert at is not None, f"still open after {HEADER_TIMEOUT + SLACK} s: {closed}"
        assert at >= HEADER_TIMEOUT * 0.9, closed  # never before the deadline


async def test_a_connection_that_sends_nothing_is_closed(server: AppServer) -> None:
    conns = [await RawConnection.open(server.base_url) for _ in range(CONNECTIONS)]
    try:
        closed = await asyncio.gather(*(conn.wait_closed(HEADER_TIMEOUT + SLACK) for conn in conns))
    finally:
        for conn in conns:
            conn.close()
    for at in closed:
        assert at is not None, f"still open after {HEADER_TIMEOUT + SLACK} s: {closed}"
        assert at >= HEADER_TIMEOUT * 0.9, closed


async def test_the_next_request_on_a_kept_alive_connection_has_its_own_deadline(
    server: AppServer,
) -> None:
    async with await RawConnection.open(server.base_url) as conn:
        await conn.send(plain_get())
        assert (await conn.read_response()).status == 200
        # Idle between requests longer than the head deadline: keep-alive's business.
        await asyncio.sleep(HEADER_TIMEOUT * 1.5)
        request = plain_get()
        await conn.send(request[:10])
        await asyncio.sleep(HEADER_TIMEOUT / 2)  # a head in two parts, within the deadline
        await conn.send(request[10:])
        assert (await conn.read_response()).status == 200
        # A third head dripped past its deadline is cut off.
        started = time.monotonic()
        closed = await drip(conn, b"GET / HTTP/1.1\r\nX-Slow: ")
        assert closed is not None
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9


async def test_blank_lines_between_requests_do_not_hold_a_connection(server: AppServer) -> None:
    """The parser skips CRLFs before a request line, and each one cancels uvicorn's keep-alive
    timer: without a deadline, a CRLF every few seconds would hold the connection for ever."""
    async with await RawConnection.open(server.base_url) as conn:
        await conn.send(plain_get())
        assert (await conn.read_response()).status == 200
        started = time.monotonic()
        closed = False
        try:
            while not closed and time.monotonic() - started < HEADER_TIMEOUT + SLACK:
                await conn.send(b"\r\n")
                closed = await conn.wait_closed(0.5) is not None
        except (ConnectionResetError, BrokenPipeError):
            closed = True
        assert closed, f"still open after {HEADER_TIMEOUT + SLACK} s of blank lines"
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9


async def test_pipelined_requests_are_all_answered_in_order(server: AppServer) -> None:
    async with await RawConnection.open(server.base_url) as conn:
        paths = ["/fragments/counter", "/healthz", "/fragments/presence", "/healthz"]
        await conn.send(b"".join(plain_get(path) for path in paths))
        responses = [await conn.read_response() for _ in paths]
        assert [r.status for r in responses] == [200] * len(paths)
        kinds = [r.headers["content-type"].split(";")[0] for r in responses]
        assert kinds == ["text/html", "application/json", "text/html", "application/json"]
        # A pipelined head that arrives in parts, the rest after the first answer.
        second = plain_get("/healthz")
        await conn.send(plain_get() + second[:12])
        assert (await conn.read_response()).status == 200
        await asyncio.sleep(HEADER_TIMEOUT / 2)
        await conn.send(second[12:])
        assert b'"status"' in (await conn.read_response()).body


# -- open streams ----------------------------------------------------------------------------


async def test_an_idle_event_stream_outlives_the_head_deadline(server: AppServer) -> None:
    async with SSEClient.open(server.base_url, timeout=10) as stream:
        assert stream.status == 200
        idle = HEADER_TIMEOUT * 3
        await asyncio.sleep(idle)
        assert not stream.closed
        pings = [ev for ev in stream.events if ev.event == "ping"]
        assert len(pings) >= 2, stream.events  # the ping interval is 2 s here
        async with await Visitor.arrive(server.base_url) as visitor:
            assert (await visitor.increment()).status_code == 200
        await stream.wait_for(named("counter"), timeout=10)
        assert not stream.closed


# -- the knobs -------------------------------------------------------------------------------


def test_the_knobs_are_read_and_bad_values_refused() -> None:
    base = {"DATABASE_URL": "postgresql:///x"}
    defaults = Settings.from_env(base)
    assert (defaults.max_header_bytes, defaults.header_timeout_seconds) == (32_768, 30.0)
    tuned = Settings.from_env(
        {**base, "RIPPLE_MAX_HEADER_BYTES": "65536", "RIPPLE_HEADER_TIMEOUT_SECONDS": "2.5"}
    )
    assert (tuned.max_header_bytes, tuned.header_timeout_seconds) == (65_536, 2.5)
    for name, value in [
        ("RIPPLE_MAX_HEADER_BYTES", "32k"),
        ("RIPPLE_MAX_HEADER_BYTES", "100"),
        ("RIPPLE_HEADER_TIMEOUT_SECONDS", "soon"),
        ("RIPPLE_HEADER_TIMEOUT_SECONDS", "0"),
        ("RIPPLE_HEADER_TIMEOUT_SECONDS", "nan"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**base, name: value})


def test_the_server_logged_no_errors(server: AppServer) -> None:
    """Last in this module: nothing above made the server fail (refusals are warnings)."""
    log = server.log_text()
    assert "request head over" in log  # the refusals above were logged as such
    assert "Traceback" not in log
    assert "Exception in ASGI application" not in log
    assert not re.search(r"\b(ERROR|CRITICAL)\b", log), log[-3000:]
