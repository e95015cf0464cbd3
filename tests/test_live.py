"""The real server, real streams: events cross workers and instances; replay; presence."""

import asyncio
import uuid
from collections.abc import Callable

import httpx
from support import database
from support.probes import eventually, metric
from support.server import AppServer
from support.sse import SSEClient, named
from support.visitors import Visitor

AppServerFactory = Callable[..., AppServer]


async def _newest_id(base_url: str) -> int:
    async with httpx.AsyncClient(base_url=base_url) as client:
        page = await client.get("/fragments/activity", headers={"accept": "application/json"})
    items = page.json()["items"]
    return max((item["id"] for item in items), default=0)


async def test_write_on_one_instance_reaches_streams_on_every_worker_of_another(
    app_server: AppServerFactory,
) -> None:
    a = await asyncio.to_thread(app_server, workers=2)
    b = await asyncio.to_thread(app_server, workers=1)
    async with (
        await Visitor.arrive(a.base_url) as reader,
        await Visitor.arrive(b.base_url) as writer,
    ):
        streams = [
            await SSEClient.connect(a.base_url, cookies=reader.cookie_header()) for _ in range(6)
        ]
        try:
            for stream in streams:
                assert stream.status == 200
                assert stream.headers["content-type"].startswith("text/event-stream")
                assert stream.headers["cache-control"] == "no-cache"
                assert stream.headers["x-accel-buffering"] == "no"
                first = await stream.next_event(timeout=5)
                assert first.retry is not None
                assert first.event == "ping"

            value = (await writer.increment()).json()["value"]
            for stream in streams:
                await stream.wait_for_event("counter", "1", timeout=5)
            shown = await reader.get("/fragments/counter", headers={"accept": "text/html"})
            assert f">{value}<" in shown.text.replace(" ", "")

            posted = await writer.post("across instances")
            assert posted.status_code == 201
            item_id = posted.json()["id"]
            for stream in streams:
                event = await stream.wait_for_event("activity", str(item_id), timeout=5)
                assert event.id == str(item_id)
            fragment = await reader.get(
                f"/fragments/activity/{item_id}", headers={"accept": "text/html"}
            )
            assert "across instances" in fragment.text
        finally:
            for stream in streams:
                await stream.aclose()
        served_by = set(a.worker_pids())
        assert len(served_by) == 2


async def test_two_hundred_concurrent_increments_add_exactly_two_hundred(
    app_server: AppServerFactory,
) -> None:
    a = await asyncio.to_thread(app_server, workers=2)
    b = await asyncio.to_thread(app_server, workers=1)
    visitors = [await Visitor.arrive(url) for url in [a.base_url, b.base_url] * 10]
    try:
        before = (await visitors[0].get("/fragments/counter")).json()["value"]
        results = await asyncio.gather(*(v.increment() for v in visitors for _ in range(10)))
        assert all(r.status_code == 200 for r in results)
        values = sorted(r.json()["value"] for r in results)
        assert values == list(range(before + 1, before + 201))
        after = (await visitors[1].get("/fragments/counter")).json()["value"]
        assert after == before + 200
    finally:
        for v in visitors:
            await v.aclose()


async def test_last_event_id_replays_exactly_the_missed_items_in_order(
    app_server: AppServerFactory,
) -> None:
    server = await asyncio.to_thread(app_server, workers=2)
    async with await Visitor.arrive(server.base_url) as poster:
        ids = [(await poster.post(f"item {n}")).json()["id"] for n in range(6)]
        cursor = ids[1]
        for headers, path in [
            ({"last-event-id": str(cursor)}, "/events"),
            ({}, f"/events?last_event_id={cursor}"),
            # The header wins over the page's original cursor in the URL.
            ({"last-event-id": str(cursor)}, "/events?last_event_id=0"),
            # A malformed header is ignored; the query cursor still counts.
            ({"last-event-id": "12abc"}, f"/events?last_event_id={cursor}"),
        ]:
            async with SSEClient.open(server.base_url, path, headers=headers) as stream:
                got = await stream.collect(2.0, predicate=named("activity"))
            replayed = [int(ev.data) for ev in got]
            assert replayed == ids[2:], (headers, path, replayed)
            assert [ev.id for ev in got] == [str(i) for i in ids[2:]]


async def test_malformed_cursors_never_fail_the_stream(app_server: AppServerFactory) -> None:
    server = await asyncio.to_thread(app_server, workers=1)
    for headers, path in [
        ({"last-event-id": "-5"}, "/events"),
        ({"last-event-id": "9" * 400}, "/events"),
        ({}, "/events?last_event_id=%00%ff"),
        ({}, "/events?last_event_id=1e9&junk=%%%"),
    ]:
        async with SSEClient.open(server.base_url, path, headers=headers) as stream:
            assert stream.status == 200, (headers, path)
            first = await stream.next_event(timeout=5)
            assert first.event == "ping"
            assert not [ev for ev in await stream.collect(0.5) if ev.event == "activity"]


async def test_too_many_missed_items_or_a_cursor_ahead_gives_one_resync(
    app_server: AppServerFactory, database_url: str
) -> None:
    server = await asyncio.to_thread(app_server, workers=1)
    author = uuid.uuid4()
    await database.execute(
        database_url, "INSERT INTO visitors (id, name) VALUES ($1, 'Bulk Author')", author
    )
    start = await _newest_id(server.base_url)
    await database.execute(
        database_url,
        "INSERT INTO activity (kind, author_id, author_name, body) "
        "SELECT 'message', $1, 'Bulk Author', 'bulk ' || n FROM generate_series(1, 501) n",
        author,
    )
    newest = await _newest_id(server.base_url)
    assert newest - start == 501
    async with SSEClient.open(server.base_url, headers={"last-event-id": str(start)}) as stream:
        got = await stream.collect(1.5, predicate=lambda ev: ev.event in {"activity", "resync"})
    assert [(ev.event, ev.id) for ev in got] == [("resync", str(newest))]

    async with SSEClient.open(server.base_url, headers={"last-event-id": str(start + 1)}) as stream:
        got = await stream.collect(3.0, predicate=lambda ev: ev.event in {"activity", "resync"})
    assert [int(ev.data) for ev in got] == list(range(start + 2, newest + 1))

    async with SSEClient.open(
        server.base_url, headers={"last-event-id": str(newest + 1000)}
    ) as stream:
        got = await stream.collect(1.5, predicate=lambda ev: ev.event in {"activity", "resync"})
    assert [(ev.event, ev.id) for ev in got] == [("resync", str(newest))]


async def test_presence_join_leave_and_rename(app_server: AppServerFactory) -> None:
    a = await asyncio.to_thread(app_server, workers=2)
    b = await asyncio.to_thread(app_server, workers=1)
    ann = await Visitor.arrive(a.base_url)
    bob = await Visitor.arrive(b.base_url)
    try:
        ann_id = ann.cookies()["ripple_visitor"].split(".")[1]
        bob_id = bob.cookies()["ripple_visitor"].split(".")[1]

        async def online() -> dict[str, str]:
            listing = (await ann.get("/fragments/presence")).json()
            return {v["id"]: v["name"] for v in listing["visitors"]}

        ann_stream = await SSEClient.connect(a.base_url, cookies=ann.cookie_header())
        bob_stream = await SSEClient.connect(b.base_url, cookies=bob.cookie_header())
        await ann_stream.wait_for_event("presence", bob_id, timeout=5)
        assert {ann_id, bob_id} <= set(await online())

        renamed = await bob.rename("Bobby Tables")
        assert renamed.status_code == 200
        assert renamed.json() == {"name": "Bobby Tables"}
        await ann_stream.wait_for_event("presence", bob_id, timeout=5)
        assert (await online())[bob_id] == "Bobby Tables"
        feed = (await ann.get("/fragments/activity")).json()["items"]
        assert any(i["kind"] == "renamed" and i["author_name"] == "Bobby Tables" for i in feed)

        await bob_stream.aclose()
        await ann_stream.wait_for_event("presence", bob_id, timeout=8)
        assert bob_id not in await online()
        assert ann_id in await online()
        await ann_stream.aclose()
    finally:
        await ann.aclose()
        await bob.aclose()


async def test_going_online_lists_the_visitor_and_writes_no_feed_item(
    app_server: AppServerFactory,
) -> None:
    """A first stream records the visitor and lists them (a presence event), but puts nothing
    in the feed: no page fetches anything because someone merely opened the site."""
    server = await asyncio.to_thread(app_server, workers=2)
    async with (
        await Visitor.arrive(server.base_url) as watcher,
        await Visitor.arrive(server.base_url) as newcomer,
    ):
        vid = newcomer.cookies()["ripple_visitor"].split(".")[1]
        async with SSEClient.open(server.base_url, cookies=watcher.cookie_header()) as seen:
            await seen.wait_for_event("ping", timeout=5)
            async with SSEClient.open(server.base_url, cookies=newcomer.cookie_header()) as s:
                await s.wait_for_event("ping", timeout=5)
                await seen.wait_for_event("presence", vid, timeout=5)
                listing = (await watcher.get("/fragments/presence")).json()
                assert vid in {v["id"] for v in listing["visitors"]}
            await newcomer.increment()  # a write that records nobody and is no feed item
            await seen.wait_for_event("counter", timeout=5)
            assert not [ev for ev in seen.events if ev.event == "activity"]
        items = (await newcomer.get("/fragments/activity")).json()["items"]
        assert not any(i["author_id"] == vid for i in items)


async def test_an_item_answered_from_memory_is_the_same_answer_as_from_the_database(
    app_server: AppServerFactory,
) -> None:
    """The first fetch renders the item (Litestar's handler), later ones come from the
    worker's memory ahead of Litestar: same body, same headers, same ETag and 304s."""
    server = await asyncio.to_thread(app_server, workers=1)
    async with await Visitor.arrive(server.base_url) as visitor:
        item_id = (await visitor.post("said <once>")).json()["id"]  # JSON: nothing rendered
        path = f"/fragments/activity/{item_id}"
        html = {"accept": "text/html", "hx-request": "true"}
        rendered, cached = (
            await visitor.get(path, headers=html),
            await visitor.get(path, headers=html),
        )
        for response in (rendered, cached):
            assert response.status_code == 200
            assert "said &lt;once&gt;" in response.text
        assert cached.content == rendered.content
        ignore = {"date", "set-cookie"}
        assert {k: v for k, v in cached.headers.items() if k not in ignore} == {
            k: v for k, v in rendered.headers.items() if k not in ignore
        }
        assert cached.headers["cache-control"] == "public, max-age=300, immutable"
        etag = cached.headers["etag"]
        unchanged = await visitor.get(path, headers={**html, "if-none-match": etag})
        assert unchanged.status_code == 304
        assert unchanged.content == b""
        assert unchanged.headers["etag"] == etag
        assert "content-type" not in unchanged.headers  # as Litestar answers a 304
        changed = await visitor.get(path, headers={**html, "if-none-match": '"other"'})
        assert changed.status_code == 200
        assert changed.content == rendered.content
        # JSON is never the cached HTML.
        as_json = await visitor.get(path, headers={"accept": "application/json"})
        assert as_json.json()["body"] == "said <once>"
        # An id beyond the cache: the ordinary 404.
        assert (await visitor.get(f"/fragments/activity/{item_id + 1000}")).status_code == 404


async def test_streams_whose_clients_go_away_are_let_go_at_once(
    app_server: AppServerFactory,
) -> None:
    """The server hears of a lost connection (from its HTTP protocol, with no task per
    stream waiting for it) and ends the stream: nothing is left subscribed."""
    server = await asyncio.to_thread(app_server, workers=1)
    base = server.base_url
    streams = [await SSEClient.connect(base) for _ in range(20)]
    try:
        for stream in streams:
            await stream.wait_for_event("ping", timeout=5)
        assert await metric(base, "ripple_open_streams") == 20
    finally:
        for stream in streams:
            await stream.aclose()
    await eventually(lambda: metric(base, "ripple_open_streams"), lambda n: n == 0, timeout=3)

    # Clients that go away while their stream is still opening (its replay query, its
    # presence join): the loss is heard once the stream is ready to listen.
    async with await Visitor.arrive(base) as visitor:
        request = (
            f"GET /events?last_event_id=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Cookie: {visitor.cookie_header()}\r\n\r\n"
        ).encode()
        for _ in range(40):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request)
            await writer.drain()
            writer.transport.abort()  # reset at once: no answer read
    await asyncio.sleep(1)
    await eventually(lambda: metric(base, "ripple_open_streams"), lambda n: n == 0, timeout=3)
