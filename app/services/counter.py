"""The live counter."""

from __future__ import annotations

from sqlalchemy import func, select, update

from app.db import Database
from app.models import Counter
from app.realtime import CHANNEL, COUNTER, Event

COUNTER_ID = 1


INCREMENT = (  # built once: building and cache-keying a statement per call costs CPU
    update(Counter)
    .where(Counter.id == COUNTER_ID)
    .values(value=Counter.value + 1)
    .returning(Counter.value, func.pg_notify(CHANNEL, Event(COUNTER, str(COUNTER_ID)).payload()))
)
CURRENT = select(Counter.value).where(Counter.id == COUNTER_ID)


async def increment(db: Database) -> int:
    """Add 1 in one atomic statement that also queues its event (sent only if it commits)."""
    async with db.autocommit() as session:
        value = (await session.execute(INCREMENT)).first()
    if value is None:
        raise LookupError("the counter row is missing: run the migrations")
    return int(value[0])


async def current(db: Database) -> int:
    async with db.autocommit() as session:
        value = await session.scalar(CURRENT)
    return int(value or 0)
