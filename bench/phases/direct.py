"""The direct reference: the app's statements straight through asyncpg (no HTTP, no ORM)."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import uuid
from typing import Any

import asyncpg

from bench.net import now
from bench.phases.context import BenchContext

FEED_LOCK_KEY = 0x52_49_50_50_4C_45  # the app's feed lock (app.services.feed)


async def direct_reference(ctx: BenchContext) -> dict[str, float]:
    """The app's write and read statements straight through asyncpg (no HTTP, no ORM).

    `post` and `increment` have the shape the app sends (one statement in its own
    transaction: the feed lock as a subquery, the insert, the NOTIFY in RETURNING);
    the others take one part away, so the ratios show what each part costs.
    """
    o = ctx.o
    author = uuid.uuid4()
    assert ctx.db is not None
    await ctx.db.execute("INSERT INTO visitors (id, name) VALUES ($1, 'Bench Direct')", author)
    newest = await ctx.newest_id()
    insert = (
        "INSERT INTO activity (kind, author_id, author_name, body) "
        "VALUES ('message', $1, 'Bench Direct', $2) RETURNING id"
    )
    statements = {
        "insert": insert,
        "insert_notify": insert + ", pg_notify('ripple_direct', 'activity:' || id)",
        "post": (
            "INSERT INTO activity (kind, author_id, author_name, body) "
            "SELECT 'message', v.id, v.name, $2 FROM visitors v "
            f"JOIN (SELECT pg_advisory_xact_lock({FEED_LOCK_KEY}) AS locked) l ON true "
            "WHERE v.id = $1 RETURNING id, pg_notify('ripple_direct', 'activity:' || id)"
        ),
        "increment": "UPDATE counters SET value = value + 1 WHERE id = 1 RETURNING value",
        "increment_notify": (
            "UPDATE counters SET value = value + 1 WHERE id = 1 "
            "RETURNING value, pg_notify('ripple_direct', 'counter:1')"
        ),
        "read_item": (
            "SELECT id, kind, author_id, author_name, body, created_at, hidden_at "
            "FROM activity WHERE id = $1"
        ),
    }

    def op(key: str) -> Any:
        sql = statements[key]
        if key.startswith("increment"):
            return lambda conn, i: conn.fetchrow(sql)
        if key == "read_item":
            return lambda conn, i: conn.fetchrow(sql, newest - i % 200)
        return lambda conn, i: conn.fetchrow(sql, author, f"direct {i}")

    pool = await asyncpg.create_pool(ctx.url, min_size=16, max_size=16)
    rounds: dict[str, list[float]] = {}
    try:
        # Short rounds, interleaved, median kept: the machine's other load drifts.
        for _, key in itertools.product(range(3), statements):
            rate = await _closed_loop_db(pool, op(key), o.throughput_seconds / 3, 16)
            rounds.setdefault(key, []).append(rate)
    finally:
        await pool.close()
    out = {key: statistics.median(rates) for key, rates in rounds.items()}
    ctx.say(f"direct: {out}")
    return out


async def _closed_loop_db(pool: asyncpg.Pool, op: Any, seconds: float, workers: int) -> float:
    done = 0
    end = now() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        # One connection held per worker: a pool's acquire/release adds a reset round trip.
        async with pool.acquire() as conn:
            while now() < end:
                await op(conn, w * 1_000_000 + i)
                i += 1
                if now() <= end:
                    done += 1

    t0 = now()
    await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(workers))), seconds + 30)
    return round(done / (min(now(), end) - t0), 1)
