"""Idempotency keys: a write sent again with the same key answers as the first one did.

The answer is recorded in the write's own transaction, so a record exists if and only if
the write committed: a first attempt that timed out at the client but committed later is
replayed, never repeated, and one that committed nothing may simply be sent again.
A transaction-scoped advisory lock on (visitor, key), taken before anything else, tells a
repeat that arrives while the first attempt is still running that it is in flight.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import BigInteger, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db import Database
from app.models import IDEMPOTENCY_KEY_MAX, IdempotencyKey

RETENTION = timedelta(hours=24)
_VALID_KEY = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX}}}")


class InvalidKey(ValueError):
    """The header is not a usable key; str(error) says why, for the client."""


class InFlight(Exception):
    """Another request with this visitor's key is still running (its lock is held)."""


class KeyUsedElsewhere(Exception):
    """The key already answered a different action (a repeat of another request)."""


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    status: int
    content_type: str
    body: bytes


def parse_key(values: Sequence[str]) -> str | None:
    """The key from the header's values (none: None), or InvalidKey with a readable reason."""
    if not values:
        return None
    if len(values) > 1:
        raise InvalidKey("Send one Idempotency-Key header, not several.")
    key = values[0]
    if not key:
        raise InvalidKey("The Idempotency-Key header is empty.")
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise InvalidKey(
            f"An Idempotency-Key can be at most {IDEMPOTENCY_KEY_MAX} characters; "
            f"this one has {len(key)}."
        )
    if not _VALID_KEY.fullmatch(key):
        raise InvalidKey(
            "An Idempotency-Key may contain only visible ASCII characters (no spaces)."
        )
    return key


def lock_id(visitor: uuid.UUID, key: str) -> int:
    """The advisory lock id of (visitor, key): a signed 64-bit hash.

    A collision with another key only makes one request wait for the other's commit
    (a 409), never a wrong replay: replays are looked up by the exact key.
    """
    digest = hashlib.blake2b(visitor.bytes + key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


TRY_LOCK = select(func.pg_try_advisory_xact_lock(bindparam("lock_id", type_=BigInteger)))
_THIS_KEY = (
    IdempotencyKey.visitor_id == bindparam("visitor_id", type_=IdempotencyKey.visitor_id.type),
    IdempotencyKey.key == bindparam("key", type_=IdempotencyKey.key.type),
)
LOOKUP = select(
    IdempotencyKey.action, IdempotencyKey.status, IdempotencyKey.content_type, IdempotencyKey.body
).where(*_THIS_KEY, IdempotencyKey.created_at > func.now() - RETENTION)
_RECORD = insert(IdempotencyKey)
# Under the lock with no live record, a conflict can only be an expired record not yet
# deleted by a heartbeat: it is replaced.
RECORD = _RECORD.on_conflict_do_update(
    index_elements=[IdempotencyKey.visitor_id, IdempotencyKey.key],
    set_={
        "action": _RECORD.excluded.action,
        "status": _RECORD.excluded.status,
        "content_type": _RECORD.excluded.content_type,
        "body": _RECORD.excluded.body,
        "created_at": func.now(),
    },
)


class InTransaction(Database):
    """What service calls inside a keyed write use: every session and connection they ask
    for is the one open transaction, so the write and its record commit together.

    The services take a Database and open their own transaction or autocommit connection;
    handing them this one keeps them unaware of keys.
    """

    def __init__(self, connection: AsyncConnection, session: AsyncSession) -> None:
        # Deliberately not Database.__init__: there is no pool or session factory here.
        self.engine = connection.engine
        self._connection = connection
        self._session = session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        yield self._session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        yield self._connection

    async def dispose(self, timeout: float = 3.0) -> None:
        raise RuntimeError("the transaction's owner closes it")


@dataclass(slots=True)
class Claim:
    """A key held for one attempt: `stored` is the answer to replay, else do the write on
    `db` and `record` its answer before the block ends."""

    db: InTransaction
    stored: StoredAnswer | None
    visitor: uuid.UUID
    key: str
    action: str
    recorded: bool = field(default=False)

    async def record(self, status: int, content_type: str, body: bytes) -> None:
        async with self.db.autocommit() as connection:
            await connection.execute(
                RECORD,
                {
                    "visitor_id": self.visitor,
                    "key": self.key,
                    "action": self.action,
                    "status": status,
                    "content_type": content_type,
                    "body": body,
                },
            )
        self.recorded = True


@asynccontextmanager
async def claim(db: Database, visitor: uuid.UUID, key: str, action: str) -> AsyncIterator[Claim]:
    """Hold (visitor, key) for one transaction; it commits when the block ends without error.

    InFlight if another attempt with this key is running, KeyUsedElsewhere if the key
    answered another action. The lookup is a statement of its own after the lock, so (in
    READ COMMITTED) it sees a record that the previous holder committed.
    """
    async with db.engine.connect() as connection, connection.begin():
        if not await connection.scalar(TRY_LOCK, {"lock_id": lock_id(visitor, key)}):
            raise InFlight
        row = (await connection.execute(LOOKUP, {"visitor_id": visitor, "key": key})).first()
        if row is not None and row.action != action:
            raise KeyUsedElsewhere
        stored = None if row is None else StoredAnswer(row.status, row.content_type, row.body)
        # Bound to a connection already in a transaction, the session joins it and never
        # commits it (SQLAlchemy's "join into an external transaction").
        session = AsyncSession(bind=connection, expire_on_commit=False)
        try:
            held = Claim(InTransaction(connection, session), stored, visitor, key, action)
            yield held
            if stored is None and not held.recorded:
                raise RuntimeError("a keyed write must record its answer before committing")
            await session.flush()
        finally:
            await session.close()


async def forget_expired(db: Database) -> None:
    """Delete records past the retention (a lookup already ignores them)."""
    async with db.transaction() as session:
        await session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.created_at < func.now() - RETENTION)
        )
