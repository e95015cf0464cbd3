"""The holding TCP proxy, checked against a real echo server and the real PostgreSQL."""

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from support.ports import accepts_connections
from support.tcpproxy import HoldingProxy

HOLD = 0.5  # how long a cut must keep bytes back to count as holding them


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while data := sock.recv(65536):
            sock.sendall(data)


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def proxy(echo_port: int) -> Iterator[HoldingProxy]:
    with HoldingProxy("127.0.0.1", echo_port) as proxy:
        yield proxy


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _nothing_arrives(sock: socket.socket, within: float = HOLD) -> bool:
    """True if the connection stays open and silent for ``within`` seconds."""
    sock.settimeout(within)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5)
    raise AssertionError(f"expected silence, got {data!r} (b'' means closed)")


def test_forwards_both_ways(proxy: HoldingProxy) -> None:
    with _connect(proxy.port) as sock:
        sock.sendall(b"hello")
        assert _recv_exactly(sock, 5) == b"hello"


def test_cut_holds_bytes_without_closing_and_heal_delivers_them(proxy: HoldingProxy) -> None:
    with _connect(proxy.port) as before:
        before.sendall(b"ping")
        assert _recv_exactly(before, 4) == b"ping"
        proxy.cut()
        assert proxy.is_cut
        before.sendall(b"held")
        assert _nothing_arrives(before)
        # A connection made during the cut is accepted (no refusal) but gets nothing through.
        with _connect(proxy.port) as during:
            during.sendall(b"waiting")
            assert _nothing_arrives(during)
            assert proxy.connection_count == 2
            proxy.heal()
            assert _recv_exactly(before, 4) == b"held"
            assert _recv_exactly(during, 7) == b"waiting"
        before.sendall(b"again")
        assert _recv_exactly(before, 5) == b"again"


def test_buffers_are_bounded_while_cut(proxy: HoldingProxy) -> None:
    """A sender during a cut is stopped by TCP back-pressure, and nothing is lost on heal."""
    payload = bytes(range(256)) * (64 * 1024 // 256) * 512  # 32 MiB, more than any buffer
    with _connect(proxy.port) as sock:
        proxy.cut()
        sock.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 5
        while sent < len(payload) and time.monotonic() < deadline:
            try:
                sent += sock.send(payload[sent : sent + 65536])
            except BlockingIOError:
                break
        assert 0 < sent < len(payload), f"the cut link took {sent} bytes without pushing back"
        sock.setblocking(True)
        sock.settimeout(5)
        proxy.heal()
        received = bytearray()
        reader = threading.Thread(
            target=lambda: received.extend(_recv_exactly(sock, len(payload))), daemon=True
        )
        reader.start()
        sock.sendall(payload[sent:])
        reader.join(timeout=30)
        assert bytes(received) == payload


def test_a_close_during_a_cut_reaches_the_other_side_only_after_the_heal() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        with HoldingProxy("127.0.0.1", listener.getsockname()[1]) as proxy:
            client = _connect(proxy.port)
            upstream, _ = listener.accept()
            with client, upstream:
                upstream.settimeout(5)
                proxy.cut()
                client.close()  # the FIN waits at the cut, as on a real link
                assert _nothing_arrives(upstream)
                proxy.heal()
                assert upstream.recv(1) == b""


def test_reset_all_closes_every_connection_and_new_ones_work(proxy: HoldingProxy) -> None:
    with _connect(proxy.port) as first:
        first.sendall(b"x")
        assert _recv_exactly(first, 1) == b"x"
        proxy.reset_all()
        with pytest.raises((ConnectionError, OSError)):
            _recv_exactly(first, 1)
    with _connect(proxy.port) as second:
        second.sendall(b"y")
        assert _recv_exactly(second, 1) == b"y"


def test_stop_closes_connections_and_the_listener(echo_port: int) -> None:
    proxy = HoldingProxy("127.0.0.1", echo_port).start()
    sock = _connect(proxy.port)
    try:
        proxy.cut()
        proxy.stop()
        with pytest.raises((ConnectionError, OSError)):
            _recv_exactly(sock, 1)
        assert not accepts_connections("127.0.0.1", proxy.port)
    finally:
        sock.close()
        proxy.stop()  # a second stop is harmless


async def test_postgres_query_hangs_while_cut_and_the_connection_survives(admin_url: str) -> None:
    """The point of the proxy: the driver sees silence, not an error, and recovers on heal."""
    parts = urlsplit(admin_url)
    with HoldingProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        netloc = f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}"
        url = urlunsplit(("postgresql", netloc, parts.path, "", ""))
        conn = await asyncpg.connect(url, timeout=5)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            await asyncio.to_thread(proxy.cut)
            query = asyncio.ensure_future(conn.fetchval("SELECT 2"))
            done, _ = await asyncio.wait([query], timeout=HOLD)
            assert not done
            assert not conn.is_closed()
            await asyncio.to_thread(proxy.heal)
            assert await asyncio.wait_for(query, 5) == 2
            assert await conn.fetchval("SELECT 3") == 3
        finally:
            await conn.close(timeout=5)
