"""Faults caused for real against real processes: a killed LISTEN connection, a database
that goes away and comes back, slow and vanished clients, SIGTERM and SIGKILL."""

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest
from support import database
from support.cluster import PgCluster
from support.probes import eventually, health, metric, online_ids
from support.server import AppServer
from support.sse import SSEClient, StreamClosed, named
from support.stalled import StalledStream
from support.visitors import Visitor

# Faults caused for real, each waiting out a recovery: the slow pass (see pyproject.toml).
pytestmark = pytest.mark.slow

AppServerFactory = Callable[..., AppServer]
# Every test client connects from 127.0.0.1: lift the per-IP stream cap.
MANY = {"MAX_STREAMS_PER_CLIENT": "0"}


async def _open_streams(base_url: str, count: int, cookies: str | None = None) -> list[SSEClient]:
    streams = await asyncio.gather(
        *(SSEClient.connect(base_url, cookies=cookies, timeout=20) for _ in range(count))
    )
    for stream in streams:
        assert stream.status == 200
    await asyncio.gather(*(s.wait_for_event("ping", timeout=20) for s in streams))
    return list(streams)


async def _close(streams: list[SSEClient]) -> None:
    await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)


async def test_terminated_listener_reconnects_resyncs_and_delivers(
    app_server: AppServerFactory, database_url: str
) -> None:
    server = await asyncio.to_thread(app_server, workers=2)
    streams = await _open_streams(server.base_url, 8)
    try:
        before = await metric(server.base_url, "ripple_listener_reconnects_total")
        states = await database.fetch(
            database_url,
            "SELECT state FROM pg_stat_activity "
            "WHERE application_name = 'ripple-listener' AND datname = current_database()",
        )
        # A listener inside a transaction would hold back the notification queue for everyone.
        assert [r["state"] for r in states] == ["idle", "idle"]
        killed = await database.fetch(
            database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'ripple-listener' AND datname = current_database()",
        )
        assert len(killed) == 2  # one listener per worker
        started = time.monotonic()
        await asyncio.gather(*(s.wait_for_event("resync", timeout=5) for s in streams))
        assert time.monotonic() - started < 5
        assert all(not s.closed for s in streams)
        async with await Visitor.arrive(server.base_url) as writer:
            item_id = (await writer.post("after the reconnect")).json()["id"]
        await asyncio.gather(
            *(s.wait_for_event("activity", str(item_id), timeout=5) for s in streams)
        )
        # The streams may all sit on one worker: the other's reconnect need not be done yet.
        await eventually(
            lambda: metric(server.base_url, "ripple_listener_reconnects_total"),
            lambda after: after - before == 2,
            10,
        )
        await asyncio.sleep(1)  # ...and no extra reconnect follows
        assert await metric(server.base_url, "ripple_listener_reconnects_total") - before == 2
        await eventually(lambda: health(server.base_url), lambda h: h[0] == 200, 10)
    finally:
        await _close(streams)


async def test_database_outage_is_reported_survived_and_loses_nothing(
    app_server: AppServerFactory, pg_cluster: Callable[[], PgCluster]
) -> None:
    cluster = await asyncio.to_thread(pg_cluster)
    await database.execute(cluster.url, "CREATE DATABASE ripple")
    url = cluster.url_for("ripple")
    await asyncio.to_thread(database.migrate, url)
    server = await asyncio.to_thread(app_server, database_url=url, workers=2)
    workers_before = set(server.worker_pids())
    latecomer = await Visitor.arrive(server.base_url)  # their first stream comes in the outage
    latecomer_id = latecomer.cookies()["ripple_visitor"].split(".")[1]
    await latecomer.aclose()
    async with await Visitor.arrive(server.base_url) as visitor:
        kept = (await visitor.post("committed before the outage")).json()["id"]
        streams = await _open_streams(server.base_url, 4, cookies=visitor.cookie_header())
        try:
            await asyncio.to_thread(cluster.stop, "fast")
            down = await eventually(lambda: health(server.base_url), lambda h: h[0] == 503, 15)
            assert down[1]["status"] == "unavailable"
            # A stream opens while its join cannot be written; it is written once possible.
            streams += await _open_streams(server.base_url, 1, cookies=latecomer.cookie_header())

            failed = await visitor.client.post(
                "/activity", data={"message": "during the outage"}, headers={"accept": "text/plain"}
            )
            assert failed.status_code == 503
            assert "database is unavailable" in failed.text
            assert "Traceback" not in failed.text

            await asyncio.sleep(2)  # a few seconds of outage
            await asyncio.to_thread(cluster.start)
            await eventually(lambda: health(server.base_url), lambda h: h[0] == 200, 30)
            await asyncio.gather(*(s.wait_for_event("resync", timeout=20) for s in streams))

            assert set(server.worker_pids()) == workers_before, "a worker crashed"
            await eventually(
                lambda: online_ids(server.base_url), lambda ids: latecomer_id in ids, 10
            )
            after = (await visitor.post("after the outage")).json()["id"]
            await asyncio.gather(
                *(s.wait_for_event("activity", str(after), timeout=5) for s in streams)
            )
            bodies = await database.fetch(url, "SELECT id, body FROM activity ORDER BY id")
            texts = {r["body"] for r in bodies}
            assert {"committed before the outage", "after the outage"} <= texts
            assert "during the outage" not in texts
            assert kept in {r["id"] for r in bodies}
        finally:
            await _close(streams)


async def test_client_that_stops_reading_never_holds_back_the_others(
    app_server: AppServerFactory,
) -> None:
    server = await asyncio.to_thread(app_server, workers=1)
    async with await Visitor.arrive(server.base_url) as writer:
        await writer.post("warming up")  # records the writer first
        stalled = [await StalledStream.open(server.base_url) for _ in range(3)]
        readers = await _open_streams(server.base_url, 3)
        try:
            sem = asyncio.Semaphore(10)

            async def post(n: int) -> int:
                async with sem:
                    response = await writer.post(f"burst {n} " + "x" * 200)
                    assert response.status_code == 201
                    return int(response.json()["id"])

            ids = sorted(await asyncio.gather(*(post(n) for n in range(300))))
            for reader in readers:
                got = await reader.collect(10, count=len(ids), predicate=named("activity"))
                assert [int(ev.data) for ev in got] == ids
            assert all(s.status == 200 for s in stalled)
        finally:
            for s in stalled:
                s.close()
            await _close(readers)


async def test_a_client_that_falls_behind_is_held_to_the_send_timeout_then_closed_cleanly(
    app_server: AppServerFactory, database_url: str
) -> None:
    """Back-pressure for real: a burst on the bus far larger than a stalled client's socket
    buffers makes the server's send wait; the stream waits for it (no error) until the send
    timeout, then the watchdog closes it, and the worker goes on serving."""
    knobs = {"RIPPLE_SEND_TIMEOUT_SECONDS": "1.5", "RIPPLE_PING_SECONDS": "0.5"}
    server = await asyncio.to_thread(app_server, knobs, workers=1)
    base = server.base_url
    closed_before = await metric(base, "ripple_slow_streams_closed_total")
    async with await StalledStream.open(base) as stalled:
        assert stalled.status == 200
        # About 9 MB of frames (the kernel lets a socket buffer grow to 4 MB), straight on
        # the bus, with ids far above any real item.
        await database.execute(
            database_url,
            "SELECT pg_notify('ripple', 'activity:' || g) FROM generate_series(900001, 1100000) g",
        )
        await eventually(
            lambda: metric(base, "ripple_slow_streams_closed_total"),
            lambda closed: closed >= closed_before + 1,
            20,
        )
    log = server.log_text()
    assert "Exception in ASGI application" not in log, server.log_tail()
    assert "RuntimeError" not in log, server.log_tail()
    assert server.worker_pids()
    assert server.running
    # The worker still serves streams and delivers.
    async with await Visitor.arrive(base) as visitor:
        (stream,) = await _open_streams(base, 1)
        try:
            item = (await visitor.post("after the stall")).json()["id"]
            await stream.wait_for_event("activity", str(item), timeout=10)
        finally:
            await stream.aclose()


async def test_dropped_streams_release_stream_slots_and_presence(
    app_server: AppServerFactory,
) -> None:
    server = await asyncio.to_thread(app_server, MANY, workers=2)
    base = server.base_url
    open_before = await metric(base, "ripple_open_streams")
    online_before = await online_ids(base)
    visitors = [await Visitor.arrive(base) for _ in range(50)]
    try:
        streams: list[SSEClient] = []
        for visitor in visitors:
            streams += await _open_streams(base, 10, cookies=visitor.cookie_header())
        await eventually(
            lambda: metric(base, "ripple_open_streams"), lambda v: v == open_before + 500, 10
        )
        ids = {v.cookies()["ripple_visitor"].split(".")[1] for v in visitors}
        await eventually(lambda: online_ids(base), lambda now: ids <= now, 10)
        for stream in streams:
            stream.abort()
        await eventually(
            lambda: metric(base, "ripple_open_streams"), lambda v: v == open_before, 10
        )
        await eventually(lambda: online_ids(base), lambda now: now == online_before, 15)
    finally:
        for visitor in visitors:
            await visitor.aclose()


async def test_sigterm_with_1000_streams_ends_them_and_exits_quickly(
    app_server: AppServerFactory, database_url: str
) -> None:
    instance = "sigterm-test"  # /healthz names no instance: the test names it itself
    server = await asyncio.to_thread(
        app_server, {**MANY, "RIPPLE_INSTANCE_ID": instance}, workers=2
    )
    visitors = [await Visitor.arrive(server.base_url) for _ in range(20)]
    streams: list[SSEClient] = []
    try:
        for visitor in visitors:
            streams += await _open_streams(server.base_url, 50, cookies=visitor.cookie_header())
        assert len(streams) == 1000
        present = await database.fetchval(
            database_url,
            "SELECT count(*) FROM presence p JOIN workers w ON w.id = p.worker_id "
            "WHERE w.instance_id = $1",
            instance,
        )
        assert present >= 20
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        await asyncio.to_thread(server.wait, 15)
        took = time.monotonic() - started
        assert took < 10, f"shutdown took {took:.1f} s"
        for stream in streams:
            await stream.wait_closed(timeout=5)
            assert stream.error is None or isinstance(stream.error, StreamClosed)
        # Firm: the app ended every stream itself (the last chunk arrived), which the
        # server's forced close after its graceful timeout would not do.
        unended = [s for s in streams if not s.ended_cleanly]
        assert not unended, f"{len(unended)} streams were cut, not ended, by SIGTERM"
        left = await database.fetchval(
            database_url, "SELECT count(*) FROM workers WHERE instance_id = $1", instance
        )
        assert left == 0
        present = await database.fetchval(
            database_url,
            "SELECT count(*) FROM presence p JOIN workers w ON w.id = p.worker_id "
            "WHERE w.instance_id = $1",
            instance,
        )
        assert present == 0
    finally:
        await _close(streams)
        for visitor in visitors:
            await visitor.aclose()


@pytest.mark.parametrize("victim", ["instance", "worker"])
async def test_sigkill_expires_presence_and_spares_the_other_instance(
    app_server: AppServerFactory, victim: str
) -> None:
    doomed = await asyncio.to_thread(app_server, workers=2)
    survivor = await asyncio.to_thread(app_server, workers=1)
    xena = await Visitor.arrive(doomed.base_url)
    yuri = await Visitor.arrive(survivor.base_url)
    try:
        xena_id = xena.cookies()["ripple_visitor"].split(".")[1]
        xena_streams = [
            await SSEClient.connect(doomed.base_url, cookies=xena.cookie_header()) for _ in range(6)
        ]
        yuri_stream = await SSEClient.connect(survivor.base_url, cookies=yuri.cookie_header())
        await eventually(lambda: online_ids(survivor.base_url), lambda ids: xena_id in ids, 10)
        if victim == "instance":
            doomed.kill()
        else:  # only the workers: the server's supervisor survives and starts new ones
            workers = doomed.worker_pids()
            assert len(workers) == 2
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
        # Expiry is 6 s in tests; the survivor's heartbeat reaps and announces it.
        started = time.monotonic()
        await eventually(lambda: online_ids(survivor.base_url), lambda ids: xena_id not in ids, 15)
        assert time.monotonic() - started < 12
        await yuri_stream.wait_for_event("presence", timeout=5)
        item = (await yuri.post("still here")).json()["id"]
        await yuri_stream.wait_for_event("activity", str(item), timeout=5)
        await yuri_stream.aclose()
        for stream in xena_streams:
            await stream.aclose()
    finally:
        await xena.aclose()
        await yuri.aclose()


async def test_unresponsive_listener_backend_is_noticed_and_replaced_once(
    app_server: AppServerFactory, database_url: str
) -> None:
    """A backend that stops answering (its socket stays open, as when half-open) is found by
    the periodic query with a timeout, replaced once, and the streams resync."""
    server = await asyncio.to_thread(app_server, {"RIPPLE_LISTENER_CHECK_SECONDS": "1"}, workers=1)
    streams = await _open_streams(server.base_url, 3)
    rows = await database.fetch(
        database_url,
        "SELECT pid FROM pg_stat_activity "
        "WHERE application_name = 'ripple-listener' AND datname = current_database()",
    )
    assert len(rows) == 1
    frozen = rows[0]["pid"]
    before = await metric(server.base_url, "ripple_listener_reconnects_total")
    os.kill(frozen, signal.SIGSTOP)
    try:
        started = time.monotonic()
        await asyncio.gather(*(s.wait_for_event("resync", timeout=10) for s in streams))
        assert time.monotonic() - started < 6
        await asyncio.sleep(4)  # several more check intervals: no reconnect loop
        assert await metric(server.base_url, "ripple_listener_reconnects_total") - before == 1
        assert not [ev for s in streams for ev in await s.collect(0.1) if ev.event == "resync"]
        async with await Visitor.arrive(server.base_url) as writer:
            item = (await writer.post("after a frozen backend")).json()["id"]
        await asyncio.gather(*(s.wait_for_event("activity", str(item), timeout=5) for s in streams))
    finally:
        os.kill(frozen, signal.SIGCONT)
        await _close(streams)


async def test_sigterm_announces_the_leaves_to_other_instances(
    app_server: AppServerFactory,
) -> None:
    leaving = await asyncio.to_thread(app_server, workers=1)
    staying = await asyncio.to_thread(app_server, workers=1)
    async with (
        await Visitor.arrive(leaving.base_url) as xena,
        await Visitor.arrive(staying.base_url) as yuri,
    ):
        xena_id = xena.cookies()["ripple_visitor"].split(".")[1]
        xena_stream = await SSEClient.connect(leaving.base_url, cookies=xena.cookie_header())
        async with SSEClient.open(staying.base_url, cookies=yuri.cookie_header()) as watcher:
            await eventually(lambda: online_ids(staying.base_url), lambda ids: xena_id in ids, 10)
            await watcher.collect(1.0)  # let earlier presence events pass
            leaving.signal(signal.SIGTERM)
            # Her stream ends at once; her entry goes with the worker and the leave is
            # announced, long before the 6 s expiry would have hidden her.
            await watcher.wait_for_event("presence", xena_id, timeout=5)
            assert xena_id not in await online_ids(staying.base_url)
        await xena_stream.aclose()
