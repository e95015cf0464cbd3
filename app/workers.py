"""Worker heartbeats in PostgreSQL: instance health and expiry of dead workers' presence."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.models import PresenceEntry, Worker
from app.realtime import PRESENCE, Event, notify

# Each presence event names one visitor; clients re-read the whole list on any of them.
NOTIFY_AT_MOST = 50


async def notify_presence(session: AsyncSession, visitors: Sequence[uuid.UUID]) -> None:
    for visitor_id in visitors:
        await notify(session, Event(PRESENCE, visitor_id.hex))


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class InstanceHealth:
    workers: int
    listeners_connected: int


class WorkerRegistry:
    def __init__(self, db: Database, *, worker_id: str, instance_id: str, expiry: float) -> None:
        self._db = db
        self.worker_id = worker_id
        self.instance_id = instance_id
        self._expiry = timedelta(seconds=expiry)
        self._health_read: asyncio.Future[InstanceHealth] | None = None
        self._health_read_started = 0.0

    async def beat(self, listener_connected: bool) -> bool:
        """Record that this worker is alive; True if its row had to be created (again)."""
        upsert = insert(Worker).values(
            id=self.worker_id, instance_id=self.instance_id, listener_connected=listener_connected
        )
        statement: Any = upsert.on_conflict_do_update(
            index_elements=[Worker.id],
            set_={"heartbeat_at": func.now(), "listener_connected": listener_connected},
        ).returning(literal_column("xmax = 0"))
        async with self._db.transaction() as session:
            return bool(await session.scalar(statement))

    async def reap(self) -> int:
        """Remove workers that stopped beating (their presence entries go with them)."""
        stale = Worker.heartbeat_at < func.now() - self._expiry
        async with self._db.transaction() as session:
            affected = (
                await session.scalars(
                    select(PresenceEntry.visitor_id)
                    .join(Worker, Worker.id == PresenceEntry.worker_id)
                    .where(stale)
                    .distinct()
                    .limit(NOTIFY_AT_MOST)
                )
            ).all()
            gone = (await session.scalars(delete(Worker).where(stale).returning(Worker.id))).all()
            await notify_presence(session, affected)
        return len(gone)

    async def remove(self, visitors: list[uuid.UUID]) -> None:
        """This worker is stopping: its presence entries go now, not at expiry."""
        async with self._db.transaction() as session:
            await session.execute(delete(Worker).where(Worker.id == self.worker_id))
            await notify_presence(session, visitors[:NOTIFY_AT_MOST])

    async def instance_health_within(self, fresh_within: float, wait: float) -> InstanceHealth:
        """`instance_health`, or TimeoutError after `wait` seconds (a health check must answer
        fast even when the database does not).

        The read is not cancelled on a timeout (cancelling a statement in flight costs a
        cancel request and a connection close, each able to hang across a partition); it
        runs on within the pool's own timeouts. Checks that come within `wait` of its start
        share it instead of piling up more; later ones start afresh, so a database that is
        back is seen at once, not when an old read finally times out.
        """
        read = self._health_read
        now = time.monotonic()
        if read is None or read.done() or now - self._health_read_started > wait:
            read = self._health_read = asyncio.ensure_future(self.instance_health(fresh_within))
            read.add_done_callback(_retrieve_exception)
            self._health_read_started = now
        done, _ = await asyncio.wait({read}, timeout=wait)
        if not done:
            raise TimeoutError(f"instance health not read within {wait} s")
        return read.result()

    async def instance_health(self, fresh_within: float) -> InstanceHealth:
        query = select(
            func.count(), func.count().filter(Worker.listener_connected.is_(True))
        ).where(
            Worker.instance_id == self.instance_id,
            Worker.heartbeat_at > func.now() - timedelta(seconds=fresh_within),
        )
        async with self._db.autocommit() as session:
            total, connected = (await session.execute(query)).one()
        return InstanceHealth(workers=int(total), listeners_connected=int(connected))


def _retrieve_exception(future: asyncio.Future[InstanceHealth]) -> None:
    """A health read nobody waited for to the end may fail unseen: not an unhandled error."""
    if not future.cancelled():
        future.exception()
