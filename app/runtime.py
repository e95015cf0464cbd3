"""One worker's long-lived parts and their start-up and shutdown order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any, TypeVar

from litestar import Litestar
from sqlalchemy import func, select
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from app import metrics
from app.config import Settings
from app.db import open_database
from app.freshreads import FreshReads
from app.itemcache import CachedItem, ItemCache
from app.realtime import ACTIVITY, CHANNEL, Event, Hub, Listener
from app.services import counter, feed, idempotency, ratelimit
from app.services.presence import PresenceTracker, PresenceView, online
from app.workers import WorkerRegistry, new_worker_id

log = logging.getLogger("ripple.runtime")
T = TypeVar("T")


class Runtime:
    """Everything a worker keeps between requests; stored in `app.state.runtime`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = open_database(settings)
        self.hub = Hub()
        self.worker_id = new_worker_id()
        self.registry = WorkerRegistry(
            self.db,
            worker_id=self.worker_id,
            instance_id=settings.instance_id,
            expiry=settings.presence_expiry_seconds,
        )
        self.presence = PresenceTracker(
            self.db,
            self.worker_id,
            settings.presence_grace_seconds,
            settings.presence_expiry_seconds,
        )
        self.listener = Listener(
            settings.listen_database,
            self._on_notification,
            check_interval=settings.listener_check_seconds,
            check_timeout=settings.listener_check_timeout_seconds,
            send_probe=self._send_probe,
            on_state=self._report_listener_state,
            on_reconnect=self._resync_after_reconnect,
        )
        self.item_cache = ItemCache(lambda: self.hub.resync_generation)
        # Set by create_app (the templates and headers are the web layer's): with it, a new
        # item is read and rendered here as its notification arrives (ItemCache.warm).
        self.item_entry: Callable[[feed.ActivityView], CachedItem] | None = None
        # What every page re-reads after an event, read once per burst of requests.
        expiry = settings.presence_expiry_seconds
        self.counter_reads: FreshReads[None, int] = FreshReads(lambda _: counter.current(self.db))
        self.presence_reads: FreshReads[None, PresenceView] = FreshReads(
            lambda _: online(self.db, expiry)
        )
        self.pages_after: FreshReads[int, list[feed.ActivityView]] = FreshReads(
            lambda after: feed.page_after(self.db, after)
        )
        self.item_reads: FreshReads[int, feed.ActivityView | None] = FreshReads(
            lambda item_id: feed.get(self.db, item_id)  # a new item: every page asks at once
        )
        # Open streams per visitor and per client IP on this worker (MAX_STREAMS_PER_CLIENT).
        self.streams_per_key: Counter[str] = Counter()
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _on_notification(self, event: Event) -> None:
        if event.kind == ACTIVITY and self.item_entry is not None and len(self.hub):
            self.item_cache.warm(event.activity_id, self._load_item)
        self.hub.publish(event)

    async def _load_item(self, item_id: int) -> CachedItem | None:
        try:
            item = await self.item_reads.get(item_id)
        except feed.Hidden:
            return None
        if item is None or self.item_entry is None:
            return None
        return self.item_entry(item)

    async def _send_probe(self, payload: str) -> None:
        async with self.db.transaction() as session:
            await session.execute(select(func.pg_notify(CHANNEL, payload)))

    async def _report_listener_state(self, connected: bool) -> None:
        await self.registry.beat(connected)

    async def _resync_after_reconnect(self) -> None:
        """Notifications sent while the listener was away are gone: every stream re-reads.
        Our presence rows may be gone too (a failover): the next heartbeat writes them again."""
        self.presence.rows_lost()
        try:
            newest = await feed.newest_id(self.db)
        except (OSError, SQLAlchemyError) as exc:  # resync anyway, with the newest id we know
            log.warning("newest feed id unavailable for the resync: %s", type(exc).__name__)
        else:
            self.hub.newest_activity_id = max(self.hub.newest_activity_id, newest)
        self.hub.resync_all("listener-reconnected")

    # -- background loops ----------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        reported_streams = -1
        while True:
            if len(self.hub) != reported_streams:
                reported_streams = len(self.hub)
                log.info("streams open=%d worker_id=%s", reported_streams, self.worker_id)
            try:
                if await self.registry.beat(self.listener.connected):
                    self.presence.rows_lost()
                await self.presence.repair()
                await self.registry.reap()
                await ratelimit.forget_old_windows(self.db)
                await idempotency.forget_expired(self.db)
                queue_usage = await self._queue_usage()
                metrics.QUEUE_USAGE.set(queue_usage)
            except Exception as exc:  # the database may be away; keep beating
                log.warning("heartbeat failed: %s", type(exc).__name__)
            await asyncio.sleep(self.settings.heartbeat_seconds)

    async def _queue_usage(self) -> float:
        async with self.db.transaction() as session:
            value = await session.scalar(select(func.pg_notification_queue_usage()))
        return float(value or 0.0)

    async def _ping_loop(self) -> None:
        """Pings keep proxies from closing idle streams; also closes streams stuck sending."""
        while True:
            # A little early, so the gap between two pings never exceeds the promised interval.
            await asyncio.sleep(self.settings.ping_seconds * 0.9)
            self.hub.ping_all()
            for sub in self.hub.stuck_streams(self.settings.send_timeout_seconds):
                metrics.SLOW_STREAMS_CLOSED.inc()
                sub.time_out()  # cancels the stream's task out of its send

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self.hub.newest_activity_id = await _retrying(lambda: feed.newest_id(self.db))
        await self.registry.beat(False)
        await self.listener.start()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="ripple-heartbeat"),
            asyncio.create_task(self._ping_loop(), name="ripple-ping"),
        ]
        log.info(
            "worker started worker_id=%s instance=%s", self.worker_id, self.settings.instance_id
        )

    def begin_shutdown(self) -> None:
        """Tell every stream to end now (clients reconnect elsewhere)."""
        if not self.stopping.is_set():
            self.stopping.set()
            log.info("worker stopping: closing %d streams", len(self.hub))
            self.hub.close_all()

    async def stop(self) -> None:
        self.begin_shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        present = self.presence.visitors()  # before stop() forgets those within the grace
        await self.presence.stop()
        await self.listener.stop()
        await self.item_cache.stop()
        try:
            await asyncio.wait_for(self.registry.remove(present), 3)
        except Exception as exc:
            log.warning("could not remove presence entries at shutdown: %s", type(exc).__name__)
        await self.db.dispose()
        metrics.forget_this_process()
        log.info("worker stopped worker_id=%s", self.worker_id)


async def _retrying(read: Callable[[], Awaitable[T]], attempts: int = 20) -> T:
    """Start-up reads wait a little for a database that is still coming up."""
    for attempt in range(attempts):
        try:
            return await read()
        except (OSError, OperationalError, InterfaceError) as exc:
            if attempt == attempts - 1:
                raise
            log.warning("database not reachable yet (%s), retrying", type(exc).__name__)
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


def _chain_exit_signals(on_exit: Callable[[], None]) -> None:
    """Wrap the server's SIGTERM/SIGINT handling so open streams hear about it first.

    The server stops accepting on SIGTERM but runs lifespan shutdown only after every
    connection has ended, and it tells open streams nothing: without this, SSE streams
    would hold a deploy until the graceful-shutdown timeout.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(on_exit)
            if callable(previous):
                previous(signum, frame)

        with contextlib.suppress(ValueError):  # not the main thread (e.g. under a test client)
            signal.signal(sig, handler)


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    runtime: Runtime = app.state.runtime
    await runtime.start()
    _chain_exit_signals(runtime.begin_shutdown)
    try:
        yield
    finally:
        await runtime.stop()
