"""Watching is free of writes: opening pages and streams cannot grow a table without bound,
nor make other pages fetch anything. One client address records at most
RATE_LIMIT_PER_MINUTE new visitors a minute; everyone past that still gets a live page, and is
listed online once they write."""

import asyncio
from collections.abc import Callable

import httpx
from support import database
from support.server import AppServer
from support.sse import SSEClient
from support.visitors import Visitor

from app.identity import COOKIE_NAME

AppServerFactory = Callable[..., AppServer]

PER_MINUTE = 5
IDENTITIES = 200
BATCH = 20


async def _row_counts(url: str) -> dict[str, int]:
    tables = await database.fetch(
        url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    counts = {}
    for row in tables:
        name = row["tablename"]
        counts[name] = await database.fetchval(url, f'SELECT count(*) FROM "{name}"')
    return counts


async def _minute(url: str) -> float:
    return float(
        await database.fetchval(url, "SELECT extract(epoch FROM date_trunc('minute', now()))")
    )


async def _fresh_identity(base_url: str) -> str:
    """GET / without a cookie, as a new browser does: the page and its identity cookie."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        page = await client.get("/", headers={"accept": "text/html"})
        assert page.status_code == 200
        cookie = page.cookies.get(COOKIE_NAME)
        assert cookie
        return f"{COOKIE_NAME}={cookie}"


async def _watch_batch(base_url: str, writer: Visitor, database_url: str) -> int:
    """BATCH fresh identities open the page and its stream; each stream gets its opening
    frame and a live event. The presence rows while they are open."""
    cookies = await asyncio.gather(*(_fresh_identity(base_url) for _ in range(BATCH)))
    streams = [await SSEClient.connect(base_url, cookies=c) for c in cookies]
    try:
        for stream in streams:
            assert stream.status == 200, bytes(stream.body)
            first = await stream.next_event(timeout=10)
            assert first.event == "ping"
            assert first.retry is not None
        value = (await writer.increment()).json()["value"]
        for stream in streams:
            await stream.wait_for_event("counter", timeout=10)
        assert value > 0
        presence = await database.fetchval(database_url, "SELECT count(*) FROM presence")
    finally:
        for stream in streams:
            await stream.aclose()
    return int(presence)


async def test_two_hundred_watchers_add_a_few_rows_and_all_get_a_live_page(
    app_server: AppServerFactory, database_url: str
) -> None:
    server = await asyncio.to_thread(
        app_server,
        env={"RATE_LIMIT_PER_MINUTE": str(PER_MINUTE), "MAX_STREAMS_PER_CLIENT": "0"},
        workers=2,
    )
    async with await Visitor.arrive(server.base_url) as writer:
        await writer.increment()  # the writer's own rate buckets exist before counting
        before = await _row_counts(database_url)
        first_minute = await _minute(database_url)
        most_present = 0
        for _ in range(IDENTITIES // BATCH):
            present = await _watch_batch(server.base_url, writer, database_url)
            most_present = max(most_present, present)
        windows = int((await _minute(database_url) - first_minute) // 60) + 1
        after = await _row_counts(database_url)

        grown = {table: after[table] - before.get(table, 0) for table in after}
        allowed = PER_MINUTE * windows  # one allowance per minute window the run touched
        assert grown["activity"] == 0, grown  # no "joined" items: no page fetched anything
        assert PER_MINUTE <= grown["visitors"] <= allowed, (grown, windows)
        assert most_present - before["presence"] <= allowed, most_present
        # Per window: the address's new-identity count and the writer's two increment buckets.
        assert grown["rate_buckets"] <= 3 * windows, grown
        assert all(rows <= 36 for rows in grown.values()), grown  # a few dozen at most

        # Past the allowance: a live page, unlisted; listed within a few heartbeats once they
        # write. (Should a new minute window have begun, the first try is recorded: try again.)
        for _attempt in range(PER_MINUTE + 2):
            late = await Visitor.arrive(server.base_url)
            late_id = late.cookies()[COOKIE_NAME].split(".")[1]
            stream = await SSEClient.connect(server.base_url, cookies=late.cookie_header())
            await stream.wait_for_event("ping", timeout=10)  # presence was decided before it
            recorded = await database.fetchval(
                database_url, "SELECT count(*) FROM visitors WHERE id::text = $1", _uuid(late_id)
            )
            if not recorded:
                break
            await stream.aclose()
            await late.aclose()
        else:
            raise AssertionError("every late identity was recorded: no allowance applied")
        try:
            await asyncio.sleep(2.5)  # two heartbeats (1 s in tests): repair() lists nobody
            assert late_id not in await _online(late)
            posted = await late.post("now I have written something")
            assert posted.status_code == 201, posted.text
            await stream.wait_for_event("presence", late_id, timeout=10)
            assert late_id in await _online(late)
            items = (await late.get("/fragments/activity")).json()["items"]
            assert [i["kind"] for i in items if i["author_id"] == late_id] == ["message"]
        finally:
            await stream.aclose()
            await late.aclose()


def _uuid(hex_id: str) -> str:
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"


async def _online(visitor: Visitor) -> set[str]:
    listing = (await visitor.get("/fragments/presence")).json()
    return {v["id"] for v in listing["visitors"]}
