"""Visitors: recorded at their first stream or write, renamed on request."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.identity import Identity
from app.models import Visitor
from app.realtime import PRESENCE, Event, notify
from app.services import feed


async def ensure_recorded(session: AsyncSession, identity: Identity) -> str:
    """Record the visitor if new (their first time online goes in the feed); their name."""
    inserted = await session.scalar(
        insert(Visitor)
        .values(id=identity.id, name=identity.guest_name)
        .on_conflict_do_nothing(index_elements=[Visitor.id])
        .returning(Visitor.id)
    )
    if inserted is not None:
        await feed.add(
            session, kind="joined", author_id=identity.id, author_name=identity.guest_name
        )
        return identity.guest_name
    name = await session.scalar(select(Visitor.name).where(Visitor.id == identity.id))
    return name or identity.guest_name


async def display_name(db: Database, identity: Identity) -> str:
    """The visitor's current name, without recording them (GET / writes nothing)."""
    async with db.autocommit() as session:
        name = await session.scalar(select(Visitor.name).where(Visitor.id == identity.id))
    return name or identity.guest_name


async def rename(db: Database, identity: Identity, new_name: str) -> str:
    """Change the display name; everyone's presence list and feed show it."""
    async with db.transaction() as session:
        old_name = await ensure_recorded(session, identity)
        if old_name == new_name:
            return new_name
        await session.execute(
            update(Visitor).where(Visitor.id == identity.id).values(name=new_name)
        )
        await feed.add(
            session, kind="renamed", author_id=identity.id, author_name=new_name, body=old_name
        )
        await notify(session, Event(PRESENCE, identity.id.hex))
    return new_name
