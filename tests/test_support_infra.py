"""The test infrastructure itself, checked against real processes (none of them the app)."""

import asyncio
import json
import os
import socket
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import asyncpg
import psutil
import pytest
from support import database
from support.cluster import PgCluster
from support.pgbouncer import PgBouncer
from support.rawhttp import ClientSide
from support.server import AppServer, ServerStartError
from support.sse import FrameParser, SSEClient, StreamClosed
from support.stalled import StalledStream

# -- SSE parsing -----------------------------------------------------------------------------


def test_client_side_reads_a_chunked_answer_split_anywhere() -> None:
    head = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n"
    wire = head + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n"
    for step in (1, 2, 3, len(wire)):
        http = ClientSide()
        http.request("GET", "/events", {"Host": "127.0.0.1"})
        out = b"".join(http.feed(wire[i : i + step]) for i in range(0, len(wire), step))
        assert out == b"hello, world"
        assert http.ended
        assert http.status == 200
        assert http.headers["set-cookie"] == "a=1, b=2"


def test_frame_parser_follows_the_sse_rules() -> None:
    text = (
        "\ufeff: a comment\r\n"
        "retry: 3000\n"
        "event: counter\ndata: 1\n\n"
        "event: activity\nid: 42\ndata: 42\r\n\r\n"
        "data: line one\ndata:line two\n\n"
        "event: nodata\n\n"  # no data: a browser dispatches nothing
        "event: ping\ndata\n\n"  # an empty data field is still data
        "id: 7\revent: resync\rdata: too-far\r\r\n"
    )
    parser = FrameParser()
    events = [ev for i in range(len(text)) for ev in parser.feed(text[i])]
    assert [(ev.event, ev.data, ev.id) for ev in events] == [
        ("counter", "1", None),
        ("activity", "42", "42"),
        ("message", "line one\nline two", None),
        ("ping", "", None),
        ("resync", "too-far", "7"),
    ]
    assert parser.comments == ["a comment"]
    assert parser.retry == 3000
    assert parser.last_event_id == "7"


async def _serve(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object],
) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def test_sse_client_reads_a_chunked_stream_over_a_raw_socket() -> None:
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        body = (
            "retry: 1000\nevent: counter\ndata: 1\n\n: ping\n\nevent: activity\nid: 5\ndata: 5\n\n"
        )
        payload = body.encode()
        # Chunk boundaries fall inside frames and lines; each piece is flushed separately.
        for i in range(0, len(payload), 7):
            piece = payload[i : i + 7]
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, base_url = await _serve(handler)
    async with (
        server,
        SSEClient.open(base_url, "/events?last_event_id=3", cookies={"session": "abc"}) as stream,
    ):
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream"
        counter = await stream.next_event(timeout=5)
        assert (counter.event, counter.data, counter.id, counter.retry) == (
            "counter",
            "1",
            None,
            1000,
        )
        activity = await stream.wait_for(lambda ev: ev.event == "activity", timeout=5)
        assert activity.id == "5"
        with pytest.raises(TimeoutError):
            await stream.next_event(timeout=0.05)
        with pytest.raises(StreamClosed):
            await stream.next_event(timeout=5)
        assert stream.closed
        assert stream.parser.comments == ["ping"]
    assert requests[0].startswith(b"GET /events?last_event_id=3 HTTP/1.1\r\n")
    assert b"\r\nCookie: session=abc\r\n" in requests[0]
    assert b"\r\nAccept: text/event-stream\r\n" in requests[0]


async def test_sse_client_reads_a_non_stream_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 5\r\ncontent-length: 4\r\n\r\nbusy"
        )
        await writer.drain()
        await asyncio.sleep(5)  # keep-alive: the client must stop at content-length
        writer.close()

    server, base_url = await _serve(handler)
    async with server, SSEClient.open(base_url) as stream:
        assert stream.status == 503
        assert stream.headers["retry-after"] == "5"
        assert await stream.read_body(timeout=2) == b"busy"


async def test_stalled_stream_makes_the_server_back_up() -> None:
    written = 0
    blocked = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        frame = b"event: counter\ndata: 1\n\n" * 64
        try:
            while True:
                writer.write(frame)
                try:
                    await asyncio.wait_for(writer.drain(), 0.5)
                except TimeoutError:
                    blocked.set()
                    return
                written += len(frame)
        finally:
            writer.transport.abort()

    server, base_url = await _serve(handler)
    async with server:
        stalled = await StalledStream.open(base_url, rcvbuf=4096)
        async with stalled:
            assert stalled.status == 200
            await asyncio.wait_for(blocked.wait(), 10)
            # The server got stuck long before the megabytes a reading client would take.
            assert written < 4 * 1024 * 1024
            assert stalled.queued_bytes() > 0


# -- AppServer, with a stand-in for the app ------------------------------------------------

FAKE_APP = textwrap.dedent(
    """
    import http.server, json, os, subprocess, sys
    # A "worker" that ignores SIGTERM, so only the group SIGKILL can end it.
    subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    with open(os.environ["FAKE_ENV_FILE"], "w") as f:
        json.dump(dict(os.environ), f)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok"}).encode()
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
    """
)


def _gone(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return bool(status == psutil.STATUS_ZOMBIE)


def test_app_server_starts_reports_workers_and_kills_its_whole_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "fake_app.py"
    script.write_text(FAKE_APP)
    env_file = tmp_path / "env.json"
    monkeypatch.setenv("DATABASE_URL_UNPOOLED", "postgresql://leaked@example/db")
    server = AppServer(
        "postgresql://postgres@127.0.0.1:1/nowhere",
        {"FAKE_ENV_FILE": str(env_file), "RIPPLE_PING_SECONDS": "9"},
        log_dir=tmp_path,
        command=[sys.executable, str(script)],
    )
    with server:
        assert server.running
        workers = server.worker_pids()
        assert len(workers) == 1
        assert workers[0] != server.pid
        env = json.loads(env_file.read_text())
        assert env["PORT"] == str(server.port)
        assert env["APP_ENV"] == "development"
        assert env["RATE_LIMIT_PER_MINUTE"] == "0"
        assert env["WEB_CONCURRENCY"] == "2"
        assert env["RIPPLE_PING_SECONDS"] == "9"
        assert env["DATABASE_URL"].endswith("/nowhere")
        assert "DATABASE_URL_UNPOOLED" not in env
    assert not server.running
    assert _gone(workers[0])


def test_app_server_start_failure_shows_the_log(tmp_path: Path) -> None:
    server = AppServer(
        None,
        log_dir=tmp_path,
        command=[sys.executable, "-c", "print('cannot start: boom'); raise SystemExit(3)"],
    )
    with pytest.raises(ServerStartError, match=r"(?s)code 3.*cannot start: boom"):
        server.start()
    assert not server.running


# -- databases ------------------------------------------------------------------------------


async def test_create_and_drop_database(admin_url: str) -> None:
    url = await database.create_database(admin_url)
    name = database.database_name(url)
    assert name.startswith("ripple_test_")
    assert await database.fetchval(url, "SELECT current_database()") == name
    idle = await database.connect(url)  # the drop must push this one out
    try:
        await database.drop_database(url, admin_url)
        exists = await database.fetchval(
            admin_url, "SELECT count(*) FROM pg_database WHERE datname = $1", name
        )
        assert exists == 0
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await idle.fetchval("SELECT 1", timeout=5)
    finally:
        idle.terminate()


def test_drop_database_refuses_foreign_names(admin_url: str) -> None:
    with pytest.raises(ValueError, match="refusing"):
        asyncio.run(database.drop_database(database.with_database(admin_url, "postgres")))


def test_asyncpg_dsn_accepts_the_sqlalchemy_scheme() -> None:
    assert database.asyncpg_dsn("postgresql+asyncpg://u@h:1/d?sslmode=require") == (
        "postgresql://u@h:1/d?sslmode=require"
    )


# -- a cluster of our own --------------------------------------------------------------------


async def test_pg_cluster_stops_and_restarts_with_its_data(
    pg_cluster: Callable[[], PgCluster],
) -> None:
    cluster = pg_cluster()
    assert cluster.is_running()
    await database.execute(cluster.url, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (41)")
    assert await database.fetchval(cluster.url, "SELECT v + 1 FROM kept") == 42

    await cluster.astop()
    assert not cluster.is_running()
    with pytest.raises(ConnectionRefusedError):
        await database.connect(cluster.url, timeout=3)

    await cluster.astart()
    assert await database.fetchval(cluster.url, "SELECT v FROM kept") == 41


def test_pg_cluster_destroy_removes_everything(pg_cluster: Callable[[], PgCluster]) -> None:
    cluster = pg_cluster()
    pid = cluster.postmaster_pid()
    assert pid is not None
    cluster.destroy()
    assert not cluster.base_dir.exists()
    assert _gone(pid)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", cluster.port)) != 0


# -- PgBouncer -------------------------------------------------------------------------------


async def test_pgbouncer_pools_per_transaction(
    admin_url: str, pgbouncer: Callable[..., PgBouncer]
) -> None:
    url = await database.create_database(admin_url)
    try:
        bouncer = pgbouncer(default_pool_size=1)
        pooled = bouncer.url_for(database.database_name(url))
        first = await database.connect(pooled, statement_cache_size=0)
        second = await database.connect(pooled, statement_cache_size=0)
        try:
            assert await first.fetchval("SELECT $1::int + 1", 1) == 2
            # With one server connection, a transaction holds it; the other client waits...
            transaction = first.transaction()
            await transaction.start()
            await first.execute("SELECT 1")
            waiting = asyncio.ensure_future(second.fetchval("SELECT $1::int * 2", 21))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            # ...and gets it at commit, although the first client stays connected (in session
            # mode it would wait for the first client to leave).
            await transaction.commit()
            assert await asyncio.wait_for(waiting, 5) == 42
        finally:
            await first.close(timeout=5)
            await second.close(timeout=5)
    finally:
        await database.drop_database(url, admin_url)


async def test_pgbouncer_serves_many_clients_without_statement_cache(
    admin_url: str, pgbouncer: Callable[..., PgBouncer]
) -> None:
    url = await database.create_database(admin_url)
    try:
        bouncer = pgbouncer(default_pool_size=2)
        pooled = bouncer.url_for(database.database_name(url))

        async def client(n: int) -> list[int]:
            conn = await database.connect(pooled, statement_cache_size=0)
            try:
                return [await conn.fetchval("SELECT $1::int + $2::int", n, i) for i in range(20)]
            finally:
                await conn.close(timeout=5)

        results = await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(10))), 30)
        assert results == [[n + i for i in range(20)] for n in range(10)]
        # Ten clients, but the server only ever saw the pool's connections.
        backends = await database.fetchval(
            admin_url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
            database.database_name(url),
        )
        assert 1 <= backends <= 2
    finally:
        await database.drop_database(url, admin_url)


def test_pgbouncer_runs_unprivileged_and_stops(pgbouncer: Callable[..., PgBouncer]) -> None:
    bouncer = pgbouncer()
    assert bouncer.running
    if os.geteuid() == 0:
        assert psutil.Process(bouncer.pid).username() == "postgres"
    bouncer.stop()
    assert not bouncer.running
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", bouncer.port)) != 0
