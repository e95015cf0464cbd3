"""The checker: what every client and every writer saw, against what the database holds.

For each stream client, every committed, visible item after its starting cursor must be
accounted for: received on the stream (live or replayed after a reconnect), or re-read
after a `resync` it acted on. Counted besides: ids received twice, ids that arrived below
one already received (out of order), ids the database does not hold (phantoms). Every write
answered 201 must be in the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.soak_clients import StreamClient, Writer
from bench.soak_pages import Expected

PRESENCE_EXPIRY_SECONDS = 6  # FAST_KNOBS' RIPPLE_PRESENCE_EXPIRY_SECONDS
ONLINE = """
FROM visitors v WHERE EXISTS (
  SELECT 1 FROM presence p JOIN workers w ON w.id = p.worker_id
   WHERE p.visitor_id = v.id AND w.heartbeat_at > now() - make_interval(secs => $1))
"""


@dataclass
class Facts:
    all_ids: set[int]
    visible: list[int]  # ascending
    counter: int


async def read_facts(url: str) -> Facts:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch("SELECT id, hidden_at IS NULL AS visible FROM activity ORDER BY id")
        counter = await conn.fetchval("SELECT value FROM counters ORDER BY id LIMIT 1")
    finally:
        await conn.close()
    return Facts(
        all_ids={r["id"] for r in rows},
        visible=[r["id"] for r in rows if r["visible"]],
        counter=int(counter or 0),
    )


async def read_expected(url: str) -> Expected:
    """What a page should show now (as app/presence.py and the feed compute it)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        newest = await conn.fetch(
            "SELECT id FROM activity WHERE hidden_at IS NULL ORDER BY id DESC LIMIT 50"
        )
        counter = await conn.fetchval("SELECT value FROM counters ORDER BY id LIMIT 1")
        online = await conn.fetchval(f"SELECT count(*) {ONLINE}", PRESENCE_EXPIRY_SECONDS)
        people = await conn.fetch(
            f"SELECT v.id {ONLINE} ORDER BY lower(v.name), v.id LIMIT 50", PRESENCE_EXPIRY_SECONDS
        )
    finally:
        await conn.close()
    return Expected(
        newest_ids=[r["id"] for r in newest],
        counter=int(counter or 0),
        online=int(online),
        people={r["id"].hex for r in people},
    )


def check_client(client: StreamClient, facts: Facts, t0: float) -> dict[str, Any]:
    ids = list(client.ids)
    received = set(ids)
    expected = [i for i in facts.visible if i > client.start_cursor]
    missing = [i for i in expected if i not in received and i not in client.reread]
    duplicates = len(ids) - len(received)
    out_of_order = 0
    top = 0
    seen: set[int] = set()
    for item in ids:
        if item < top and item not in seen:
            out_of_order += 1
        seen.add(item)
        top = max(top, item)
    phantoms = sorted(received - facts.all_ids)
    around: list[tuple[int, float]] = []
    if missing:  # what arrived just before and after the first missing id, and when
        at = next((i for i, item in enumerate(ids) if item > missing[0]), len(ids))
        around = [(ids[i], round(client.times[i] - t0, 3)) for i in range(max(0, at - 3), at + 3)
                  if i < len(ids)]  # fmt: skip
    return {
        "history": [(round(t - t0, 3), what, n) for t, what, n in client.history]
        if missing
        else [],
        "around_first_missing": around,
        "index": client.index,
        "port": client.port,
        "start_cursor": client.start_cursor,
        "expected": len(expected),
        "received": len(ids),
        "reread": len(client.reread),
        "resyncs": len(client.resyncs),
        "opens": client.opens,
        "missing": missing,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "phantoms": phantoms,
        "reread_pending": client.reread_pending,
        "counter_read": client.counter_read,
    }


def check(
    clients: list[StreamClient], writer: Writer, facts: Facts, t0: float, examples: int = 5
) -> dict[str, Any]:
    per_client = [check_client(c, facts, t0) for c in clients]
    bad = [
        r
        for r in per_client
        if r["missing"] or r["duplicates"] or r["out_of_order"] or r["phantoms"]
    ]
    acked_posts = writer.posts.acknowledged()
    lost = sorted(set(acked_posts) - facts.all_ids)
    counter_wrong = [r for r in per_client if r["counter_read"] != facts.counter]
    increments = writer.increments
    acked_increments = sum(1 for s in increments.status if s == 200)
    unknown_increments = sum(1 for s in increments.status if s not in (200, 201) and s < 400)
    last_increment = max(
        (t for t, s in zip(increments.sent, increments.status, strict=True) if s == 200),
        default=0.0,
    )
    stale = [
        c.index
        for c in clients
        if not any(t > last_increment for t in (*c.counter_times, *c.open_times))
    ]
    missing_total = sum(len(r["missing"]) for r in per_client)
    return {
        "clients": len(clients),
        "clients_complete": len(clients) - len(bad),
        "deliveries": sum(r["received"] for r in per_client),
        "missing": missing_total,
        "duplicates": sum(r["duplicates"] for r in per_client),
        "out_of_order": sum(r["out_of_order"] for r in per_client),
        "phantoms": sum(len(r["phantoms"]) for r in per_client),
        "resyncs": sum(r["resyncs"] for r in per_client),
        "clients_resynced": sum(1 for r in per_client if r["resyncs"]),
        "reread_items": sum(r["reread"] for r in per_client),
        "rereads_pending": sum(1 for r in per_client if r["reread_pending"]),
        "reconnects": sum(max(0, r["opens"] - 1) for r in per_client),
        "never_connected": sum(1 for r in per_client if r["opens"] == 0),
        "bad_examples": [
            {**r, "missing": r["missing"][:20], "missing_count": len(r["missing"])}
            for r in bad[:examples]
        ],
        "missing_ids": sorted({i for r in per_client for i in r["missing"]})[:50],
        "posts": {
            "sent": len(writer.posts.status),
            "acknowledged": len(acked_posts),
            "lost": lost,
            "skipped": writer.skipped,
        },
        "counter": {
            "database": facts.counter,
            "increments_acknowledged": acked_increments,
            "increments_unanswered": unknown_increments,
            "clients_reading_wrong_value": len(counter_wrong),
            "wrong_examples": [(r["index"], r["counter_read"]) for r in counter_wrong[:5]],
            "clients_not_notified_after_last_increment": len(stale),
        },
        "items_in_database": len(facts.all_ids),
    }


def verdict(result: dict[str, Any]) -> list[str]:
    """Every failed check, in words; empty when nothing was lost, doubled or left stale."""
    c = result["checker"]
    problems = []
    if c["missing"]:
        ids = c["missing_ids"][:10]
        problems.append(f"{c['missing']} deliveries missing (items {ids})")
    for key in ("duplicates", "out_of_order", "phantoms", "never_connected", "rereads_pending"):
        if c[key]:
            problems.append(f"{key}: {c[key]}")
    if c["posts"]["lost"]:
        problems.append(f"acknowledged posts missing from the database: {c['posts']['lost'][:10]}")
    if c["counter"]["clients_reading_wrong_value"]:
        problems.append(f"counter: {c['counter']}")
    if c["counter"]["clients_not_notified_after_last_increment"]:
        n = c["counter"]["clients_not_notified_after_last_increment"]
        problems.append(f"{n} clients got no counter event or reopen after the last increment")
    for page in result.get("pages", []):
        if not page["converged"]:
            problems.append(f"page {page['label']} did not converge: {page['problems']}")
    return problems


def timing_notes(result: dict[str, Any], target: float) -> list[str]:
    """Targets missed in time (not in correctness): pages later than `target` seconds."""
    return [
        f"page {p['label']} showed the truth {p['after_s']} s after the last fault or write "
        f"(target {target:g} s)"
        for p in result.get("pages", [])
        if p["converged"] and p["after_s"] is not None and p["after_s"] > target
    ]
