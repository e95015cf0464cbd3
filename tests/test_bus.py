"""The bus against a real PostgreSQL: NOTIFY only on commit, id-only payloads, commit order.

These tests really commit (NOTIFY fires only on commit), on the session's test database.
"""

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from support import database

from app.config import Settings
from app.db import Database, open_database
from app.identity import Identity
from app.realtime import CHANNEL
from app.services import counter, feed
from app.services.visitors import ensure_recorded, post_message

PAYLOAD = re.compile(r"^(counter|presence|activity|resync):[0-9A-Za-z_-]{1,64}$")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    settings = Settings.from_env({"DATABASE_URL": database_url})
    db = open_database(settings)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
async def notifications(database_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Every payload on the app's channel, from a LISTEN connection of our own."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    conn: asyncpg.Connection = await database.connect(database_url)
    await conn.add_listener(CHANNEL, lambda *args: queue.put_nowait(args[3]))
    try:
        yield queue
    finally:
        await conn.close()


async def _drain(queue: asyncio.Queue[str], settle: float = 0.3) -> list[str]:
    await asyncio.sleep(settle)
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def counter_bump(session: AsyncSession) -> None:
    await session.execute(text("UPDATE counters SET value = value + 1 WHERE id = 1"))
    await session.execute(text("SELECT pg_notify('ripple', 'counter:1')"))


def _visitor() -> Identity:
    return Identity(id=uuid.uuid4(), guest_name="Test Visitor")


async def test_rolled_back_write_notifies_no_one(
    db: Database, notifications: asyncio.Queue[str]
) -> None:
    await _drain(notifications)

    async def write_then_fail() -> None:
        async with db.transaction() as session:
            await ensure_recorded(session, _visitor())  # a first write: the visitor row
            await counter_bump(session)
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        await write_then_fail()
    assert await _drain(notifications, settle=0.5) == []

    value = await counter.increment(db)
    payload = await asyncio.wait_for(notifications.get(), 5)
    assert payload == "counter:1"
    assert value >= 1


async def test_payloads_are_ids_only_and_small(
    db: Database, notifications: asyncio.Queue[str]
) -> None:
    await _drain(notifications)
    secret = "a message that must never travel on the bus " + "x" * 200
    visitor = _visitor()
    item = await post_message(db, visitor, secret)  # records the visitor, then posts
    payloads = await _drain(notifications, settle=0.5)
    assert payloads, "the post notified nothing"
    assert f"activity:{item.id}" in payloads
    for payload in payloads:
        assert PAYLOAD.match(payload), payload
        assert len(payload.encode()) < 100
        assert "message" not in payload


async def test_feed_ids_follow_commit_order(
    db: Database, notifications: asyncio.Queue[str]
) -> None:
    """T1 takes an id first; T2, started later, cannot take one until T1 commits."""
    first, second = _visitor(), _visitor()
    async with db.transaction() as session:
        await ensure_recorded(session, first)
        await ensure_recorded(session, second)
    await _drain(notifications)

    t1_inserted = asyncio.Event()
    t1_may_commit = asyncio.Event()

    async def t1() -> int:
        async with db.transaction() as session:
            item = await feed.add(session, kind="message", author_id=first.id, author_name="one")
            t1_inserted.set()
            await t1_may_commit.wait()
        return item.id

    async def t2() -> int:
        async with db.transaction() as session:
            item = await feed.add(session, kind="message", author_id=second.id, author_name="two")
        return item.id

    task1 = asyncio.create_task(t1())
    await asyncio.wait_for(t1_inserted.wait(), 5)
    task2 = asyncio.create_task(t2())
    await asyncio.sleep(0.5)
    assert not task2.done(), "a second writer took an id while the first was uncommitted"
    t1_may_commit.set()
    id1, id2 = await asyncio.wait_for(asyncio.gather(task1, task2), 10)
    assert id1 < id2
    payloads = [p for p in await _drain(notifications, settle=0.5) if p.startswith("activity:")]
    assert payloads == [f"activity:{id1}", f"activity:{id2}"]


async def test_later_started_transaction_committing_first_gets_the_lower_id(
    db: Database, notifications: asyncio.Queue[str]
) -> None:
    """Start order does not matter: the id is taken under the lock, so ids follow commits."""
    first, second = _visitor(), _visitor()
    async with db.transaction() as session:
        await ensure_recorded(session, first)
        await ensure_recorded(session, second)
    await _drain(notifications)
    async with db.transaction() as early:
        await early.execute(text("SELECT 1"))  # T1 has started
        async with db.transaction() as late:
            late_item = await feed.add(late, kind="message", author_id=second.id, author_name="l")
        early_item = await feed.add(early, kind="message", author_id=first.id, author_name="e")
    assert late_item.id < early_item.id
    payloads = [p for p in await _drain(notifications, settle=0.5) if p.startswith("activity:")]
    assert payloads == [f"activity:{late_item.id}", f"activity:{early_item.id}"]


async def test_one_statement_posts_keep_commit_order_and_fail_silently(
    db: Database, notifications: asyncio.Queue[str]
) -> None:
    """A recorded visitor's post is one statement (lock, insert, notify): ids still follow
    commit order under concurrency, and a statement that fails notifies no one."""
    author = _visitor()
    async with db.transaction() as session:
        await ensure_recorded(session, author)
    await _drain(notifications)
    posts = [feed.post_if_recorded(db, author.id, f"c{n}") for n in range(40)]
    items = [item for item in await asyncio.gather(*posts) if item is not None]
    assert len(items) == 40
    payloads = [p for p in await _drain(notifications, settle=0.5) if p.startswith("activity:")]
    assert payloads == [f"activity:{i}" for i in sorted(item.id for item in items)]

    with pytest.raises(IntegrityError):
        await feed.post_if_recorded(
            db, author.id, "x" * 281
        )  # the table's own length check refuses it
    assert await _drain(notifications, settle=0.5) == []
