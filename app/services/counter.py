"""The live counter."""

from __future__ import annotations

from sqlalchemy import select, update

from app.db import Database
from app.models import Counter
from app.realtime import COUNTER, Event, notify

COUNTER_ID = 1


async def increment(db: Database) -> int:
    """Add 1 in one atomic statement; the event goes out only if it commits."""
    async with db.transaction() as session:
        value = (
            await session.execute(
                update(Counter)
                .where(Counter.id == COUNTER_ID)
                .values(value=Counter.value + 1)
                .returning(Counter.value)
            )
        ).scalar_one()
        await notify(session, Event(COUNTER, str(COUNTER_ID)))
    return int(value)


async def current(db: Database) -> int:
    async with db.transaction() as session:
        value = await session.scalar(select(Counter.value).where(Counter.id == COUNTER_ID))
    return int(value or 0)
