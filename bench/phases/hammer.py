"""The counter hammer: increments far faster than a page should repaint, and whether every
page still ends on the final value without being flooded."""

from __future__ import annotations

import asyncio
from typing import Any

from bench import load, procs, stats
from bench.load import Recorder
from bench.net import now
from bench.phases.context import BenchContext, Contender, Notices


async def hammer(
    ctx: BenchContext, c: Contender, server: procs.Target, recorder: Recorder, live: list[bool]
) -> dict[str, Any]:
    o = ctx.o
    assert c.writer is not None
    notices = await Notices().start(ctx.url, c.channel)
    commits = notices.counter
    start_value = await ctx.counter_value()
    recorder.begin(1 << 62, None, counting=True)
    requests = [
        load.post_request(c.writer.port, v, "increment", i) for i, v in enumerate(c.writer_visitors)
    ]
    pool = await ctx.pool(c.writer.port, o.hammer_conns)
    lag = load.LoopLag()
    before = ctx.cpu_snapshot(server, c.writer)
    try:
        writes = await load.steady(
            pool, requests, o.hammer_rate, o.hammer_seconds, 20.0, o.hammer_conns
        )
    finally:
        pool.close()
    await asyncio.sleep(1.0)  # anything still in flight when the pool closed has landed
    final = await ctx.counter_value()
    clients = [i for i, ok in enumerate(live) if ok]
    # Quiet: no client has had a counter event for a second (bounded).
    quiet = await load.wait_until(
        lambda: now() - recorder.counter_last > 1.0, min(60.0, 10.0 + len(clients) / 200)
    )
    after = ctx.cpu_snapshot(server, c.writer)
    lag_ms = lag.stop()
    await notices.stop()
    recorder.counting = False
    # Then each page re-reads the counter once, as it does after its last event.
    recorder.read_counters(clients)
    await load.wait_until(
        lambda: recorder.counter_reads_done >= len(clients), min(60.0, 10 + len(clients) / 100)
    )
    last_commit = commits[-1] if commits else 0.0
    # Both clocks are read on this process's event loop: the bench's own listener and a
    # stream can be served in either order within one loop turn, so allow for one turn.
    slack = max(0.005, (lag_ms.get("p99") or 0.0) / 1000)
    rates = [stats.max_per_second(recorder.counter_times[i]) for i in clients]
    gaps = stats.gaps(recorder.counter_times, clients)
    counts = [len(recorder.counter_times[i]) for i in clients]
    span = max(
        1e-9,
        (max(writes.done) if writes.done else 0) - (min(writes.sent) if writes.sent else 0),
    )
    out = {
        "target_per_s": o.hammer_rate,
        "increments_ok": writes.ok,
        "increments_failed": len(writes.status) - writes.ok,
        "increments_skipped": writes.skipped,
        "increments_unanswered": writes.outstanding,
        "achieved_per_s": round(writes.ok / span, 1),
        "final_value": final,
        "expected_final": start_value + writes.ok,
        "notifications_seen": len(commits),
        "quiet_after_writes": quiet,
        "slack_ms": round(slack * 1000, 1),
        "clients": len(clients),
        "clients_on_final_value": sum(1 for i in clients if recorder.counter_seen[i] == final),
        "clients_last_event_after_final_commit": sum(
            1
            for i in clients
            if recorder.counter_times[i] and recorder.counter_times[i][-1] >= last_commit - slack
        ),
        "events_per_client_mean": round(sum(counts) / max(1, len(counts)), 1),
        "max_events_in_any_second": max(rates, default=0),
        "clients_over_10_per_s": sum(1 for r in rates if r > 10),
        "min_gap_ms": gaps["min"],
        "gap_p1_ms": gaps["p1"],
        "gaps_under_90ms": gaps["under_90"],
        "bench_loop_lag_ms": lag_ms,
        "cpu": ctx.cpu_delta(before, after),
    }
    ctx.say(f"{c.key} hammer: {out}")
    return out
