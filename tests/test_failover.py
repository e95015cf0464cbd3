"""Failover to a streaming standby, caused for real: a primary and a ``pg_basebackup -R``
replica on throwaway clusters, the app on a multi-host DATABASE_URL, the standby promoted
and the old primary stopped (or fenced read-only) while streams are open."""

import asyncio
import time
from collections.abc import Callable, Iterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from support import database
from support.cluster import PgCluster, wait_until_replayed
from support.probes import eventually, health, online_ids
from support.server import AppServer
from support.sse import SSEClient
from support.visitors import Visitor

from app.config import DatabaseUrl

pytestmark = pytest.mark.slow

AppServerFactory = Callable[..., AppServer]
WRITES_RESUME_WITHIN = 15.0  # seconds after the old primary is told to stop
STREAMS = 4


@pytest.fixture
def pair() -> Iterator[tuple[PgCluster, PgCluster]]:
    """A running primary and its streaming standby; both destroyed at teardown."""
    clusters: list[PgCluster] = []
    try:
        primary = PgCluster()
        clusters.append(primary)
        primary.start()
        clusters.append(PgCluster.standby_of(primary))
        yield clusters[0], clusters[1]
    finally:
        errors = []
        for cluster in reversed(clusters):
            try:
                cluster.destroy()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def netloc_url(primary: PgCluster, standby: PgCluster, dbname: str) -> str:
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
    return f"postgresql://postgres@{hosts}/{dbname}?target_session_attrs=read-write"


def query_url(primary: PgCluster, standby: PgCluster, dbname: str) -> str:
    hosts = f"host=127.0.0.1:{primary.port}&host=127.0.0.1:{standby.port}"
    return f"postgresql://postgres@/{dbname}?{hosts}&target_session_attrs=read-write"


async def _migrated(primary: PgCluster, standby: PgCluster) -> None:
    await database.execute(primary.url, "CREATE DATABASE ripple")
    await asyncio.to_thread(database.migrate, primary.url_for("ripple"))
    await wait_until_replayed(primary, standby)


async def _open_streams(base_url: str, cookies: str) -> list[SSEClient]:
    streams = await asyncio.gather(
        *(SSEClient.connect(base_url, cookies=cookies, timeout=20) for _ in range(STREAMS))
    )
    assert all(stream.status == 200 for stream in streams)
    await asyncio.gather(*(s.wait_for_event("ping", timeout=20) for s in streams))
    return list(streams)


async def _posted(visitor: Visitor, message: str, streams: list[SSEClient]) -> int:
    response = await visitor.post(message)
    assert response.status_code == 201, response.text
    item_id: int = response.json()["id"]
    await asyncio.gather(*(s.wait_for_event("activity", str(item_id), timeout=10) for s in streams))
    return item_id


async def _listeners_on(cluster: PgCluster) -> int:
    count: int = await database.fetchval(
        cluster.url_for("ripple"),
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ripple-listener'",
    )
    return count


async def _state_of(cluster: PgCluster) -> tuple[int, list[tuple[int, str]]]:
    """The counter and the newest visible feed items, read on the server itself."""
    url = cluster.url_for("ripple")
    value: int = await database.fetchval(url, "SELECT value FROM counters WHERE id = 1")
    rows = await database.fetch(
        url,
        "SELECT id, body FROM activity WHERE hidden_at IS NULL ORDER BY id DESC LIMIT 50",
    )
    return value, [(r["id"], r["body"]) for r in rows]


async def _state_shown(visitor: Visitor) -> tuple[int, list[tuple[int, str]]]:
    """The counter and feed as a page reads them, through the app's fragments."""
    counter = await visitor.get("/fragments/counter")
    items = await visitor.get("/fragments/activity?after=0")
    counter.raise_for_status()
    items.raise_for_status()
    html = await visitor.get("/fragments/counter", headers={"accept": "text/html"})
    value: int = counter.json()["value"]
    assert f'data-value="{value}"' in html.text  # the HTML fragment agrees with the JSON one
    return value, [(item["id"], item["body"]) for item in items.json()["items"]]


async def _first_write_on(
    cluster: PgCluster, visitor: Visitor, started: float, label: str
) -> tuple[int, float]:
    """Post until an item lands on ``cluster``; its id and the seconds since ``started``."""
    attempt = 0
    while time.monotonic() - started < WRITES_RESUME_WITHIN:
        attempt += 1
        message = f"{label} {attempt}"
        response = await visitor.post(message)
        if response.status_code == 201:
            item_id: int = response.json()["id"]
            landed = await database.fetchval(
                cluster.url_for("ripple"), "SELECT count(*) FROM activity WHERE body = $1", message
            )
            if landed:
                return item_id, time.monotonic() - started
        else:
            assert response.status_code == 503, response.text  # never a 500 meanwhile
            assert "Traceback" not in response.text
        await asyncio.sleep(0.1)
    raise AssertionError(f"no write reached the new primary within {WRITES_RESUME_WITHIN} s")


async def _close(streams: list[SSEClient]) -> None:
    await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)


async def test_both_spellings_connect_to_the_read_write_host_whatever_the_order(
    pair: tuple[PgCluster, PgCluster],
) -> None:
    """The real asyncpg and SQLAlchemy take each translated form and skip the standby, even
    when it is listed first; target_session_attrs is what picks the host, not the order."""
    primary, standby = pair
    for first, second in ((standby, primary), (primary, standby)):
        for raw in (netloc_url(first, second, "postgres"), query_url(first, second, "postgres")):
            url = DatabaseUrl.parse(raw)
            conn = await asyncpg.connect(url.asyncpg_dsn, timeout=10)
            try:
                assert await conn.fetchval("SELECT inet_server_port()") == primary.port
                assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
            finally:
                await conn.close()
            engine = create_async_engine(url.sqlalchemy_url)
            try:
                async with engine.connect() as connection:
                    port = await connection.scalar(text("SELECT inet_server_port()"))
                    assert port == primary.port
            finally:
                await engine.dispose()


@pytest.mark.parametrize("stop_mode", ["fast", "immediate"])
async def test_promoted_standby_takes_over_streams_writes_and_pages(
    pair: tuple[PgCluster, PgCluster], app_server: AppServerFactory, stop_mode: str
) -> None:
    """Promote, then stop the old primary (``immediate``: as if it crashed)."""
    primary, standby = pair
    await _migrated(primary, standby)
    server = await asyncio.to_thread(
        app_server,
        database_url=netloc_url(primary, standby, "ripple"),
        workers=2,
        env={"MAX_STREAMS_PER_CLIENT": "0"},
    )
    async with await Visitor.arrive(server.base_url) as visitor:
        visitor_id = visitor.cookies()["ripple_visitor"].split(".")[1]
        streams = await _open_streams(server.base_url, visitor.cookie_header())
        try:
            await eventually(lambda: _listeners_on(primary), lambda n: n == 2, 10)
            for n in range(3):
                await _posted(visitor, f"replicated {n}", streams)
            for _ in range(2):
                assert (await visitor.increment()).status_code == 200
            await wait_until_replayed(primary, standby)

            await standby.apromote()
            # Acknowledged by the old primary, which no longer streams to anyone: asynchronous
            # replication loses these. Their NOTIFY reached every stream all the same.
            await _posted(visitor, "acknowledged but never replicated", streams)
            assert (await visitor.increment()).status_code == 200
            # A newcomer recorded only by the old primary: their visitor row is lost too.
            newcomer = await Visitor.arrive(server.base_url)
            newcomer_id = newcomer.cookies()["ripple_visitor"].split(".")[1]
            newcomer_stream = await SSEClient.connect(
                server.base_url, cookies=newcomer.cookie_header()
            )
            streams.append(newcomer_stream)
            await eventually(
                lambda: online_ids(server.base_url), lambda ids: newcomer_id in ids, 10
            )

            started = time.monotonic()
            await primary.astop(stop_mode)
            stopped_after = time.monotonic() - started

            await asyncio.gather(*(s.wait_for_event("resync", timeout=20) for s in streams))
            assert not [s for s in streams if s.closed]
            new_id, resumed_after = await _first_write_on(standby, visitor, started, "after")
            print(
                f"\nfailover ({stop_mode}): primary stopped in {stopped_after:.2f} s; "
                f"first write on the new primary {resumed_after:.2f} s after the stop began"
            )
            assert resumed_after < WRITES_RESUME_WITHIN
            await asyncio.gather(
                *(s.wait_for_event("activity", str(new_id), timeout=10) for s in streams)
            )
            await eventually(lambda: health(server.base_url), lambda h: h[0] == 200, 30)
            assert await _listeners_on(standby) == 2
            assert (await visitor.increment()).status_code == 200

            new_state = await _state_of(standby)
            assert "acknowledged but never replicated" not in {body for _, body in new_state[1]}
            assert new_state[0] == 3  # two replicated increments and one after; one lost
            assert await _state_shown(visitor) == new_state
            await eventually(lambda: online_ids(server.base_url), lambda ids: visitor_id in ids, 15)
            # The newcomer is recorded again on the new primary and listed.
            await eventually(
                lambda: online_ids(server.base_url), lambda ids: newcomer_id in ids, 15
            )
            await newcomer.aclose()
        finally:
            await _close(streams)


async def test_fenced_old_primary_loses_the_pool_and_the_listener(
    pair: tuple[PgCluster, PgCluster], app_server: AppServerFactory
) -> None:
    """The old primary keeps running but is fenced read-only (as failover managers do):
    nothing breaks the connections to it, so only noticing read-only moves them."""
    primary, standby = pair
    await _migrated(primary, standby)
    server = await asyncio.to_thread(
        app_server,
        database_url=query_url(primary, standby, "ripple"),
        workers=2,
        env={"MAX_STREAMS_PER_CLIENT": "0", "RIPPLE_LISTENER_CHECK_SECONDS": "1"},
    )
    async with await Visitor.arrive(server.base_url) as visitor:
        streams = await _open_streams(server.base_url, visitor.cookie_header())
        try:
            await eventually(lambda: _listeners_on(primary), lambda n: n == 2, 10)
            # Fill both workers' pools with connections to the old primary.
            await asyncio.gather(*(visitor.get("/fragments/counter") for _ in range(20)))
            await _posted(visitor, "before", streams)
            await wait_until_replayed(primary, standby)

            await standby.apromote()
            started = time.monotonic()
            await database.execute(
                primary.url, "ALTER SYSTEM SET default_transaction_read_only = on"
            )
            await database.execute(primary.url, "SELECT pg_reload_conf()")

            await asyncio.gather(*(s.wait_for_event("resync", timeout=20) for s in streams))
            await eventually(lambda: _listeners_on(standby), lambda n: n == 2, 15)
            assert await _listeners_on(primary) == 0
            new_id, resumed_after = await _first_write_on(standby, visitor, started, "fenced")
            print(f"\nfenced failover: first write on the new primary after {resumed_after:.2f} s")
            await asyncio.gather(
                *(s.wait_for_event("activity", str(new_id), timeout=10) for s in streams)
            )

            async def later_writes_on_new_primary() -> bool:
                bodies = [f"later {time.monotonic()} {n}" for n in range(8)]
                responses = await asyncio.gather(*(visitor.post(body) for body in bodies))
                landed = await database.fetchval(
                    standby.url_for("ripple"),
                    "SELECT count(*) FROM activity WHERE body = ANY($1::text[])",
                    bodies,
                )
                return all(r.status_code == 201 for r in responses) and landed == len(bodies)

            # Each worker's pool drops every old connection at its first refused write.
            await eventually(later_writes_on_new_primary, bool, WRITES_RESUME_WITHIN)
            await eventually(lambda: health(server.base_url), lambda h: h[0] == 200, 30)
            assert await _state_shown(visitor) == await _state_of(standby)
        finally:
            await _close(streams)
