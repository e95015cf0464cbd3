"""Events on the bus: what a NOTIFY payload carries and how a frame is written.

A payload is `kind:ref` where ref is an id (never user text), far below Postgres'
8000-byte cap. NOTIFY is issued inside the writer's transaction, so Postgres delivers
it only if that transaction commits, in commit order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import NOTIFY_CHANNEL

CHANNEL: Final = NOTIFY_CHANNEL

COUNTER: Final = "counter"
PRESENCE: Final = "presence"
ACTIVITY: Final = "activity"
RESYNC: Final = "resync"
PING: Final = "ping"

BUS_KINDS: Final = frozenset({COUNTER, PRESENCE, ACTIVITY, RESYNC})
_REF = re.compile(r"[0-9A-Za-z_-]{1,64}")


class PayloadError(ValueError):
    """A NOTIFY payload on our channel that we did not write."""


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    ref: str

    def __post_init__(self) -> None:
        if self.kind not in BUS_KINDS and self.kind != PING:
            raise PayloadError(f"unknown event kind {self.kind!r}")
        if self.ref and not _REF.fullmatch(self.ref):
            raise PayloadError("event ref must be a short id")

    def payload(self) -> str:
        return f"{self.kind}:{self.ref}"

    @classmethod
    def from_payload(cls, payload: str) -> Event:
        kind, sep, ref = payload.partition(":")
        if not sep:
            raise PayloadError("payload has no kind")
        return cls(kind, ref)

    @property
    def activity_id(self) -> int:
        return int(self.ref)


async def notify(session: AsyncSession, event: Event) -> None:
    """Queue the event for delivery when (and only if) this transaction commits."""
    await session.execute(select(func.pg_notify(CHANNEL, event.payload())))


def encode_frame(
    event: str, data: str, event_id: int | None = None, retry_ms: int | None = None
) -> bytes:
    """One server-sent event frame. Inputs are ids and fixed words: no newlines allowed."""
    for part in (event, data):
        if "\n" in part or "\r" in part:
            raise ValueError("a frame field cannot contain a line break")
    lines = []
    if retry_ms is not None:
        lines.append(f"retry: {int(retry_ms)}")
    lines.append(f"event: {event}")
    if event_id is not None:
        lines.append(f"id: {int(event_id)}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()
