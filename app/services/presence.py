"""Who is online: a visitor is online while one of their streams is open on any worker.

Each worker records (worker, visitor) rows while it holds streams for that visitor.
A leave is written only after a grace period without any stream, so a reload is not
a leave and a join for everyone; and a join or leave is announced only when it changes who
is online (not while another live worker lists the visitor: a reload whose new stream
lands on another worker or instance). Rows of a worker that died expire with its heartbeat.

Watching is nearly free of writes: a stream of a visitor not yet recorded records them (a
visitor row and a presence row, no feed item) only within their client address's allowance
of new identities per minute (`ratelimit.allow_new_identity`). Past it the stream works as
usual but its visitor stays unlisted until they write something: the heartbeat's `repair()`
then finds their visitor row and lists them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, exists, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.identity import Identity
from app.models import PresenceEntry, Visitor, Worker
from app.realtime import PRESENCE, Event, notify
from app.services import ratelimit
from app.services.visitors import ensure_recorded, recorded
from app.workers import NOTIFY_AT_MOST, notify_presence

SHOWN_NAMES = 50
# Joins and leaves of one visitor take this transaction-scoped lock (two-int advisory keys,
# apart from the feed's bigint lock and the names' space).
PRESENCE_LOCK_SPACE = 0x50524553  # "PRES"


async def _lock_visitor(session: AsyncSession, vid: uuid.UUID) -> None:
    await session.execute(
        select(func.pg_advisory_xact_lock(PRESENCE_LOCK_SPACE, func.hashtext(vid.hex)))
    )


@dataclass(frozen=True, slots=True)
class _Arrival:
    """A stream's visitor and where they came from (for the new-identity allowance)."""

    identity: Identity
    address: str
    new_per_minute: int


@dataclass(frozen=True, slots=True)
class OnlineVisitor:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class PresenceView:
    online_count: int
    visitors: list[OnlineVisitor]

    @property
    def more(self) -> int:
        return self.online_count - len(self.visitors)


async def online(db: Database, expiry: float) -> PresenceView:
    """Everyone with a stream on a live worker: a count and the first names."""
    live = (
        exists()
        .where(PresenceEntry.visitor_id == Visitor.id)
        .where(PresenceEntry.worker_id == Worker.id)
        .where(Worker.heartbeat_at > func.now() - timedelta(seconds=expiry))
    )
    async with db.autocommit() as session:
        count = await session.scalar(select(func.count()).select_from(Visitor).where(live))
        rows = await session.execute(
            select(Visitor.id, Visitor.name)
            .where(live)
            .order_by(func.lower(Visitor.name), Visitor.id)
            .limit(SHOWN_NAMES)
        )
        shown = [OnlineVisitor(id=r.id.hex, name=r.name) for r in rows]
    return PresenceView(online_count=int(count or 0), visitors=shown)


class PresenceTracker:
    """This worker's open streams per visitor, mirrored into the presence table.

    A join or leave that cannot be written (the database is away) is remembered and
    written by `repair()`, which the worker's heartbeat calls, so nobody stays invisible
    or lingers as a ghost after an outage.
    """

    def __init__(self, db: Database, worker_id: str, grace: float, expiry: float) -> None:
        self._db = db
        self._worker_id = worker_id
        self._grace = grace
        self._expiry = timedelta(seconds=expiry)
        self._streams: dict[uuid.UUID, int] = {}
        self._leaving: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._unrecorded: dict[uuid.UUID, _Arrival] = {}  # joins not yet written
        self._unlisted: set[uuid.UUID] = set()  # past their address's allowance, not recorded
        self._unremoved: set[uuid.UUID] = set()  # leaves not yet written
        self._reassert = False  # our rows may be gone: our worker row expired, or a failover
        self._arrivals: dict[uuid.UUID, _Arrival] = {}  # streaming visitors, to record again

    def _lock(self, visitor_id: uuid.UUID) -> asyncio.Lock:
        lock = self._locks.get(visitor_id)
        if lock is None:
            lock = self._locks[visitor_id] = asyncio.Lock()
        return lock

    def visitors(self) -> list[uuid.UUID]:
        """Everyone this worker shows as online (streaming, or within the leave grace)."""
        return list(self._streams.keys() | self._leaving.keys())

    async def opened(self, identity: Identity, address: str, new_per_minute: int) -> None:
        """A stream opened: list the visitor and announce a join if they were away.

        `address` is the client's; it may record at most `new_per_minute` new visitors a
        minute (0: no limit). A visitor past that stays unlisted until they write.
        """
        vid = identity.id
        self._streams[vid] = self._streams.get(vid, 0) + 1
        self._unremoved.discard(vid)
        leaving = self._leaving.pop(vid, None)
        if leaving is not None:
            leaving.cancel()  # back within the grace: nobody saw them leave
            return
        if self._streams[vid] > 1:
            return
        arrival = self._arrivals[vid] = _Arrival(identity, address, new_per_minute)
        try:
            await self._join(arrival)
        except BaseException:
            self._unrecorded[vid] = arrival
            raise

    async def _join(self, arrival: _Arrival) -> None:
        vid = arrival.identity.id
        async with self._lock(vid):
            known = bool(await recorded(self._db, [vid]))
            if not known and not await ratelimit.allow_new_identity(
                self._db, arrival.address, arrival.new_per_minute
            ):
                self._unlisted.add(vid)
                return
            async with self._db.transaction() as session:
                if not known:
                    await ensure_recorded(session, arrival.identity)
                await self._insert_row(session, vid)

    async def _insert_row(self, session: AsyncSession, vid: uuid.UUID) -> None:
        await _lock_visitor(session, vid)
        added = await session.scalar(
            insert(PresenceEntry)
            .values(worker_id=self._worker_id, visitor_id=vid)
            .on_conflict_do_nothing()
            .returning(PresenceEntry.visitor_id)
        )
        if added is not None and not await self._online_elsewhere(session, vid):
            await notify(session, Event(PRESENCE, vid.hex))

    async def _online_elsewhere(self, session: AsyncSession, vid: uuid.UUID) -> bool:
        """Another live worker lists the visitor: a join or leave here changes no list (a
        reload that lands on another worker), so it is not announced. Asked under the
        visitor's lock (`_lock_visitor`), so that of two workers' leaves one announces."""
        elsewhere = (
            exists()
            .where(PresenceEntry.visitor_id == vid)
            .where(PresenceEntry.worker_id != self._worker_id)
            .where(PresenceEntry.worker_id == Worker.id)
            .where(Worker.heartbeat_at > func.now() - self._expiry)
        )
        return bool(await session.scalar(select(elsewhere)))

    async def _list_recorded(self) -> None:
        """Unlisted visitors who have written since (their visitor row exists) go online."""
        for vid in await recorded(self._db, list(self._unlisted)):
            async with self._lock(vid):
                if vid not in self._unlisted:
                    continue  # their stream closed meanwhile
                async with self._db.transaction() as session:
                    await self._insert_row(session, vid)
                self._unlisted.discard(vid)
                if vid not in self._streams:
                    self._unremoved.add(vid)  # closed while being listed: the next repair

    def closed(self, identity: Identity) -> None:
        """A stream closed: if it was the visitor's last here, leave after the grace."""
        vid = identity.id
        left = self._streams.get(vid, 0) - 1
        if left > 0:
            self._streams[vid] = left
            return
        self._streams.pop(vid, None)
        self._arrivals.pop(vid, None)
        if self._unrecorded.pop(vid, None) is not None or vid in self._unlisted:
            self._unlisted.discard(vid)
            lock = self._locks.get(vid)
            if lock is not None and not lock.locked():
                del self._locks[vid]  # one per watcher would otherwise stay for good
            return  # never written, nothing to take back
        self._leaving[vid] = asyncio.create_task(self._leave_later(vid))

    async def _leave_later(self, vid: uuid.UUID) -> None:
        await asyncio.sleep(self._grace)
        if self._leaving.get(vid) is asyncio.current_task():
            del self._leaving[vid]
        try:
            await self._leave(vid)
        except Exception:
            self._unremoved.add(vid)

    async def _leave(self, vid: uuid.UUID) -> None:
        async with self._lock(vid):
            if vid in self._streams:
                return
            async with self._db.transaction() as session:
                await _lock_visitor(session, vid)
                gone = await session.scalar(
                    delete(PresenceEntry)
                    .where(
                        PresenceEntry.worker_id == self._worker_id,
                        PresenceEntry.visitor_id == vid,
                    )
                    .returning(PresenceEntry.visitor_id)
                )
                if gone is not None and not await self._online_elsewhere(session, vid):
                    await notify(session, Event(PRESENCE, vid.hex))
        if vid not in self._streams and vid not in self._leaving:
            self._locks.pop(vid, None)

    def rows_lost(self) -> None:
        """Our rows may be gone: our worker row was expired while we could not beat, or the
        listener reconnected (after a failover the new primary may lack recent writes)."""
        self._reassert = True

    async def repair(self) -> None:
        """Write what could not be written earlier; what fails stays for the next call."""
        if self._reassert:
            await self._reassert_rows()
            self._reassert = False
        for arrival in list(self._unrecorded.values()):
            await self._join(arrival)
            self._unrecorded.pop(arrival.identity.id, None)
        if self._unlisted:
            await self._list_recorded()
        for vid in list(self._unremoved):
            await self._leave(vid)
            self._unremoved.discard(vid)

    async def _reassert_rows(self) -> None:
        ids = [v for v in self.visitors() if v not in self._unrecorded and v not in self._unlisted]
        if not ids:
            return
        known = set(await recorded(self._db, ids))
        for vid in ids:
            if vid not in known and vid in self._arrivals:
                # Their visitor row was lost (a failover to a standby that had not replayed
                # it): record them again, as at their first stream (repair's next step).
                self._unrecorded[vid] = self._arrivals[vid]
        ids = [v for v in ids if v in known]
        if not ids:
            return
        async with self._db.transaction() as session:
            await session.execute(
                insert(PresenceEntry)
                .values([{"worker_id": self._worker_id, "visitor_id": v} for v in ids])
                .on_conflict_do_nothing()
            )
            await notify_presence(session, ids[:NOTIFY_AT_MOST])

    async def stop(self) -> None:
        for task in self._leaving.values():
            task.cancel()
        for task in list(self._leaving.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._leaving.clear()
