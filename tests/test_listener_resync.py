"""After the listener reconnects, streams are told to resync before they are sent anything the
new connection brought. Otherwise a stream could be sent item N+5 while N..N+4 (committed
during the outage) were never sent: its Last-Event-ID would already be past them, and a
reconnect elsewhere would never replay them (found by the chaos soak, bench/soak.py)."""

import asyncio

import asyncpg

from app.config import DatabaseUrl
from app.realtime import ACTIVITY, CHANNEL, Event
from app.realtime.listener import Listener


async def test_resync_is_delivered_before_notifications_of_the_new_connection(
    database_url: str,
) -> None:
    log: list[str] = []
    notifier = await asyncpg.connect(database_url)

    async def resync_after_a_notification_arrived() -> None:
        # A write commits while the resync is being prepared (as one does at 20 posts/s).
        await notifier.execute(f"SELECT pg_notify('{CHANNEL}', 'activity:424242')")
        await asyncio.sleep(0.5)  # ample time for PostgreSQL to deliver it to the new LISTEN
        log.append("resync")

    def deliver(event: Event) -> None:
        if event.kind == ACTIVITY:
            log.append(f"activity {event.activity_id}")

    listener = Listener(
        DatabaseUrl.parse(database_url),
        deliver,
        check_interval=0.5,
        on_reconnect=resync_after_a_notification_arrived,
    )
    try:
        await listener.start()
        first_pid = listener.backend_pid
        assert first_pid is not None
        await notifier.execute("SELECT pg_terminate_backend($1)", first_pid)
        async with asyncio.timeout(20):
            while len(log) < 2:
                await asyncio.sleep(0.05)
        assert listener.backend_pid != first_pid
        assert log == ["resync", "activity 424242"]
    finally:
        await listener.stop()
        await notifier.close()


async def test_any_failure_of_the_health_check_means_reconnect(database_url: str) -> None:
    """The soak once saw asyncpg raise InternalClientError from the listener's health query
    (a connection terminated while busy): an error outside the usual ones ended the
    supervisor, and the worker stayed deaf while reported connected. Here the health query
    fails with another unusual error, for real: its result cannot be decoded."""
    arrived: list[int] = []

    def deliver(event: Event) -> None:
        if event.kind == ACTIVITY:
            arrived.append(event.activity_id)

    def undecodable(_text: str) -> int:
        raise RuntimeError("undecodable")

    admin = await asyncpg.connect(database_url)
    listener = Listener(DatabaseUrl.parse(database_url), deliver, check_interval=0.5)
    try:
        await listener.start()
        conn, first_pid = listener._conn, listener.backend_pid
        assert conn is not None
        await conn.set_type_codec(
            "int4", schema="pg_catalog", encoder=str, decoder=undecodable, format="text"
        )
        async with asyncio.timeout(20):
            while listener.backend_pid in (first_pid, None) or not listener.connected:
                assert listener._task is not None
                assert not listener._task.done(), listener._task
                await asyncio.sleep(0.1)
        await admin.execute(f"SELECT pg_notify('{CHANNEL}', 'activity:777777')")
        async with asyncio.timeout(10):
            while 777777 not in arrived:
                await asyncio.sleep(0.05)
    finally:
        await listener.stop()
        await admin.close()
