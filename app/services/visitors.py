"""Visitors: recorded at their first write (or first stream, within a per-address allowance),
renamed on request, and never two alike among the names people can see.

Layering: this module sits above `feed` (recording a visitor comes before their first post);
`feed` never imports it.

Names are compared by their key: NFKC, case-folded, runs of whitespace made one space, so
"Ann", "ANN" and "Ann" in fullwidth letters are one name. A name is taken while its owner is
online or for 24 hours after they chose it. A rename to a taken name is refused; a generated
guest name that is taken gets a distinguishing suffix when the visitor is recorded. Both hold
a transaction-scoped advisory lock on the keys they check, so two visitors cannot win one name.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
import uuid
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import exists, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import Database
from app.identity import Identity
from app.models import NAME_MAX, PresenceEntry, Visitor
from app.realtime import PRESENCE, Event, notify
from app.services import feed

RENAME_HOLD = timedelta(hours=24)  # a chosen name stays reserved this long, online or not
# Name locks use PostgreSQL's two-int advisory key space, which never meets the feed's bigint lock.
NAME_LOCK_SPACE = 0x4E414D45  # "NAME"
GUEST_SUFFIXES = 6  # " (2)" .. " (7)" are tried before a random one


class NameTaken(ValueError):
    """Another visitor shows this name; str(error) is shown to the visitor."""


def name_key(name: str) -> str:
    """What two names must not share: NFKC, case-folded, whitespace runs made one space."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(folded.split())


def _lock_id(key: str) -> int:
    """A stable signed 32-bit number for a name key (Python's hash() differs per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), signed=True)


async def _lock_names(session: AsyncSession, keys: Sequence[str]) -> None:
    """Hold every key's lock until commit; in sorted order, so two holders cannot deadlock."""
    for lock_id in sorted({_lock_id(k) for k in keys}):
        await session.execute(select(func.pg_advisory_xact_lock(NAME_LOCK_SPACE, lock_id)))


async def _taken(session: AsyncSession, keys: Sequence[str], me: Identity) -> set[str]:
    """The keys among `keys` that another visitor shows: online now, or chosen within a day."""
    online = exists().where(PresenceEntry.visitor_id == Visitor.id)
    recent = Visitor.renamed_at > func.now() - RENAME_HOLD
    rows = await session.scalars(
        select(Visitor.name_key)
        .where(Visitor.name_key.in_(list(keys)), Visitor.id != me.id, online | recent)
        .distinct()
    )
    return set(rows)


def _guest_candidates(guest: str) -> list[str]:
    return [guest] + [f"{guest} ({n})"[:NAME_MAX] for n in range(2, GUEST_SUFFIXES + 2)]


async def _free_guest_name(session: AsyncSession, identity: Identity) -> str:
    candidates = _guest_candidates(identity.guest_name)
    keys = [name_key(c) for c in candidates]
    await _lock_names(session, keys)
    taken = await _taken(session, keys, identity)
    for candidate, key in zip(candidates, keys, strict=True):
        if key not in taken:
            return candidate
    return f"{identity.guest_name} ({secrets.token_hex(2)})"[:NAME_MAX]


async def ensure_recorded(session: AsyncSession, identity: Identity) -> str:
    """Record the visitor if new (under a guest name nobody shows); their current name.

    Nothing goes in the feed: recording a visitor makes no page fetch anything.
    """
    name = await session.scalar(select(Visitor.name).where(Visitor.id == identity.id))
    if name is not None:
        return name
    guest = await _free_guest_name(session, identity)
    inserted = await session.scalar(
        insert(Visitor)
        .values(id=identity.id, name=guest, name_key=name_key(guest))
        .on_conflict_do_nothing(index_elements=[Visitor.id])
        .returning(Visitor.id)
    )
    if inserted is not None:
        return guest
    # Recorded meanwhile by another worker or request: theirs stands.
    return await session.scalar(select(Visitor.name).where(Visitor.id == identity.id)) or guest


async def recorded(db: Database, visitor_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these visitor ids have a visitor row."""
    if not visitor_ids:
        return set()
    async with db.autocommit() as connection:
        rows = await connection.execute(select(Visitor.id).where(Visitor.id.in_(visitor_ids)))
        return {row.id for row in rows}


async def display_name(db: Database, identity: Identity) -> str:
    """The visitor's current name, without recording them (GET / writes nothing)."""
    async with db.autocommit() as session:
        name = await session.scalar(select(Visitor.name).where(Visitor.id == identity.id))
    return name or identity.guest_name


async def post_message(db: Database, identity: Identity, message: str) -> feed.ActivityView:
    """A visitor's message (already validated): one round trip for a recorded visitor;
    a first write records the visitor and posts in one transaction."""
    item = await feed.post_if_recorded(db, identity.id, message)
    if item is not None:
        return item
    async with db.transaction() as session:
        name = await ensure_recorded(session, identity)
        return await feed.add(
            session, kind="message", author_id=identity.id, author_name=name, body=message
        )


async def rename(db: Database, identity: Identity, new_name: str) -> str:
    """Change the display name (already validated); NameTaken if another visitor shows it.

    Everyone's presence list shows the new name, and the feed says who was renamed.
    """
    key = name_key(new_name)
    async with db.transaction() as session:
        current = await session.scalar(select(Visitor.name).where(Visitor.id == identity.id))
        # Every lock this transaction needs, taken at once in one order (no deadlock), before
        # the check: a concurrent rename to the same name waits here and then sees this one.
        guest_keys = [] if current is not None else _guest_candidates(identity.guest_name)
        await _lock_names(session, [key, *(name_key(g) for g in guest_keys)])
        if await _taken(session, [key], identity):
            raise NameTaken("That name is already used by someone else here; choose another.")
        old_name = await ensure_recorded(session, identity)
        if old_name == new_name:
            return new_name
        await session.execute(
            update(Visitor)
            .where(Visitor.id == identity.id)
            .values(name=new_name, name_key=key, renamed_at=func.now())
        )
        await feed.add(
            session, kind="renamed", author_id=identity.id, author_name=new_name, body=old_name
        )
        await notify(session, Event(PRESENCE, identity.id.hex))
    return new_name
