"""The activity feed: items in commit order, pages, replay cursors, moderation.

The bottom layer of the services: it knows visitors only as rows to read a name from and
never records one (app.services.visitors does, then calls in here).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, String, bindparam, cast, delete, func, literal, select, true, update
from sqlalchemy.dialects.postgresql import aggregate_order_by, insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.models import Activity, Visitor
from app.realtime import ACTIVITY, CHANNEL, RESYNC, Event, notify

PAGE_SIZE = 50
REPLAY_LIMIT = 500

# Held from taking an id to commit, so ids follow commit order: a client that has
# seen item N can no longer miss an item below N (NOTIFY already serialises commits).
FEED_LOCK_KEY = 0x52_49_50_50_4C_45  # "RIPPLE"


class Hidden(LookupError):
    """The item exists but an operator hid it."""


@dataclass(frozen=True, slots=True)
class ActivityView:
    id: int
    kind: str
    author_id: str
    author_name: str
    body: str
    created_at: datetime

    @classmethod
    def of(cls, row: Activity | Row[Any]) -> ActivityView:
        return cls(
            id=row.id,
            kind=row.kind,
            author_id=row.author_id.hex,
            author_name=row.author_name,
            body=row.body,
            created_at=row.created_at,
        )


async def add(
    session: AsyncSession, *, kind: str, author_id: uuid.UUID, author_name: str, body: str = ""
) -> ActivityView:
    """Insert an item and queue its event, inside the caller's transaction."""
    await session.execute(select(func.pg_advisory_xact_lock(FEED_LOCK_KEY)))
    row = (
        await session.execute(
            insert(Activity)
            .values(kind=kind, author_id=author_id, author_name=author_name, body=body)
            .returning(Activity)
        )
    ).scalar_one()
    await notify(session, Event(ACTIVITY, str(row.id)))
    return ActivityView.of(row)


def _insert_as_visitor() -> Any:
    """One statement: take the feed lock, insert under the visitor's current name, notify.

    The lock is a one-row subquery the insert reads from, so it is held before the id is
    drawn and until the statement's transaction commits; the NOTIFY in RETURNING belongs
    to the same transaction. Built once with bind parameters (`visitor_id`, `kind`,
    `body`): building and cache-keying it per call was a large part of a post's CPU.
    """
    feed_lock = select(func.pg_advisory_xact_lock(FEED_LOCK_KEY).label("locked")).subquery()
    source = (
        select(
            bindparam("kind", type_=Activity.kind.type),
            Visitor.id,
            Visitor.name,
            bindparam("body", type_=Activity.body.type),
        )
        .select_from(Visitor)
        .join(feed_lock, true())
        .where(Visitor.id == bindparam("visitor_id", type_=Visitor.id.type))
    )
    payload = literal(f"{ACTIVITY}:") + cast(Activity.id, String)
    return (
        insert(Activity)
        .from_select(["kind", "author_id", "author_name", "body"], source)
        .returning(*Activity.__table__.c, func.pg_notify(CHANNEL, payload))
    )


INSERT_AS_VISITOR = _insert_as_visitor()


async def post_if_recorded(db: Database, author_id: uuid.UUID, message: str) -> ActivityView | None:
    """A recorded visitor's message (already validated) in one round trip; None when the
    author has no visitor row yet (recording them is the visitors service's job)."""
    async with db.autocommit() as connection:
        row = (
            await connection.execute(
                INSERT_AS_VISITOR, {"visitor_id": author_id, "kind": "message", "body": message}
            )
        ).first()
    return None if row is None else ActivityView.of(row)


ITEMS = select(*Activity.__table__.c)
ONE_ITEM = ITEMS.where(Activity.id == bindparam("item_id", type_=Activity.id.type))


async def get(db: Database, item_id: int) -> ActivityView | None:
    async with db.autocommit() as connection:
        row = (await connection.execute(ONE_ITEM, {"item_id": item_id})).first()
    if row is None:
        return None
    if row.hidden_at is not None:
        raise Hidden(item_id)
    return ActivityView.of(row)


VISIBLE_ITEMS = ITEMS.where(Activity.hidden_at.is_(None))
# Built once with bind parameters (see INSERT_AS_VISITOR): pages are asked for on every event.
NEWEST_PAGE = VISIBLE_ITEMS.order_by(Activity.id.desc()).limit(PAGE_SIZE + 1)
PAGE_BEFORE = (
    VISIBLE_ITEMS.where(Activity.id < bindparam("before", type_=Activity.id.type))
    .order_by(Activity.id.desc())
    .limit(PAGE_SIZE + 1)
)
PAGE_AFTER = (
    VISIBLE_ITEMS.where(Activity.id > bindparam("after", type_=Activity.id.type))
    .order_by(Activity.id.asc())
    .limit(PAGE_SIZE)
)


async def page_before(db: Database, before: int | None) -> tuple[list[ActivityView], bool]:
    """Up to PAGE_SIZE visible items below `before` (None: the newest), newest first."""
    async with db.autocommit() as connection:
        if before is None:
            result = await connection.execute(NEWEST_PAGE)
        else:
            result = await connection.execute(PAGE_BEFORE, {"before": before})
        rows = list(result.all())
    return [ActivityView.of(r) for r in rows[:PAGE_SIZE]], len(rows) > PAGE_SIZE


async def page_after(db: Database, after: int) -> list[ActivityView]:
    """The PAGE_SIZE visible items right after `after`, newest first."""
    async with db.autocommit() as connection:
        rows = list((await connection.execute(PAGE_AFTER, {"after": after})).all())
    return [ActivityView.of(r) for r in reversed(rows)]


async def newest_id(db: Database) -> int:
    async with db.autocommit() as session:
        value = await session.scalar(select(func.max(Activity.id)))
    return int(value or 0)


def _ids_after() -> Any:
    missed = (
        select(Activity.id)
        .where(
            Activity.id > bindparam("after", type_=Activity.id.type),
            Activity.hidden_at.is_(None),
        )
        .order_by(Activity.id.asc())
        .limit(bindparam("limit", type_=Integer))
        .subquery()
    )
    return select(
        select(func.max(Activity.id)).scalar_subquery(),
        select(func.array_agg(aggregate_order_by(missed.c.id, missed.c.id))).scalar_subquery(),
    )


IDS_AFTER = _ids_after()  # every stream (re)opening asks it


async def ids_after(
    db: Database, after: int, limit: int = REPLAY_LIMIT + 1
) -> tuple[list[int], int]:
    """Visible item ids above `after` in order (at most `limit`), and the newest id overall,
    read in one statement so both come from one snapshot."""
    async with db.autocommit() as connection:
        newest, ids = (await connection.execute(IDS_AFTER, {"after": after, "limit": limit})).one()
    return list(ids or []), int(newest or 0)


async def hide(db: Database, item_id: int) -> bool:
    """Hide an item (moderation); every open page drops it. False if there is no such item."""
    async with db.transaction() as session:
        hidden = await session.scalar(
            update(Activity)
            .where(Activity.id == item_id, Activity.hidden_at.is_(None))
            .values(hidden_at=func.now())
            .returning(Activity.id)
        )
        if hidden is None:
            return await session.get(Activity, item_id) is not None
        await notify(session, Event(RESYNC, "hidden"))
    return True


async def prune(db: Database, older_than: timedelta) -> int:
    """Delete items older than the retention age; the number deleted."""
    async with db.transaction() as session:
        deleted = await session.scalars(
            delete(Activity)
            .where(Activity.created_at < func.now() - older_than)
            .returning(Activity.id)
        )
        count = len(deleted.all())
        if count:
            await notify(session, Event(RESYNC, "pruned"))
    return count
