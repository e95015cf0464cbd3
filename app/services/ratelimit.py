"""Per-visitor and per-IP limits on writes, and per-IP on new identities recorded by
watching, counted in PostgreSQL so every worker and instance shares them (Litestar's
RateLimitConfig counts in one process's memory store).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import delete, func, literal, text
from sqlalchemy.dialects.postgresql import insert

from app.db import Database
from app.models import RateBucket

WINDOW_SECONDS = 60
INCREMENT_FACTOR = 10  # increments: ten times as many as posts and renames
IP_FACTOR = 5  # one IP may be many visitors behind one NAT


@dataclass(frozen=True, slots=True)
class Limited:
    retry_after: int


def limits_for(action: str, per_minute: int) -> tuple[int, int]:
    """(per visitor, per IP) allowance per minute for an action."""
    base = per_minute * (INCREMENT_FACTOR if action == "increment" else 1)
    return base, base * IP_FACTOR


async def check(
    db: Database, *, action: str, visitor: str, ip: str, per_minute: int
) -> Limited | None:
    """Count this request; a Limited if the visitor or their IP is over the allowance."""
    if per_minute <= 0:
        return None
    group = "inc" if action == "increment" else "write"
    per_visitor, per_ip = limits_for(action, per_minute)
    window = func.date_trunc("minute", func.now())
    statement = (
        insert(RateBucket)
        .values(
            [
                {"key": f"v:{visitor}:{group}", "window_start": window, "hits": 1},
                {"key": f"ip:{ip}:{group}"[:120], "window_start": window, "hits": 1},
            ]
        )
        .on_conflict_do_update(
            index_elements=[RateBucket.key, RateBucket.window_start],
            set_={"hits": RateBucket.hits + literal(1)},
        )
        # Seconds left in the window by the database's clock, which every instance shares.
        .returning(
            RateBucket.key,
            RateBucket.hits,
            literal(WINDOW_SECONDS) - func.extract("epoch", func.now() - RateBucket.window_start),
        )
    )
    async with db.transaction() as session:
        rows = (await session.execute(statement)).all()
    over = [
        left for key, hits, left in rows if hits > (per_visitor if key.startswith("v:") else per_ip)
    ]
    if not over:
        return None
    return Limited(retry_after=max(1, math.ceil(float(max(over)))))


async def allow_new_identity(db: Database, ip: str, per_minute: int) -> bool:
    """Count one new visitor identity recorded from this client address; False past
    `per_minute` in this window (0: no limit, nothing counted).

    Watching must not let one address grow the visitor and presence tables without bound;
    one row per address per minute counts it, shared by every worker like `check`.
    """
    if per_minute <= 0:
        return True
    window = func.date_trunc("minute", func.now())
    statement = (
        insert(RateBucket)
        .values(key=f"ip:{ip}:new"[:120], window_start=window, hits=1)
        .on_conflict_do_update(
            index_elements=[RateBucket.key, RateBucket.window_start],
            set_={"hits": RateBucket.hits + literal(1)},
        )
        .returning(RateBucket.hits)
    )
    async with db.transaction() as session:
        hits = await session.scalar(statement)
    return int(hits or 0) <= per_minute


async def forget_old_windows(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(
            delete(RateBucket).where(
                RateBucket.window_start < func.now() - text("interval '2 minutes'")
            )
        )
