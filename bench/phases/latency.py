"""A latency phase with N streams open: activity posts at a steady rate through the writer
instance, and when each reached each stream (`event`), and, in a page mode, the fragments
the pages fetched for it (`page_item`, `page_page`, `page_after`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench import load, procs, stats
from bench.load import Recorder
from bench.phases.context import BenchContext, Contender, Notices


async def latency_phase(
    ctx: BenchContext,
    c: Contender,
    server: procs.Target,
    recorder: Recorder,
    live: list[bool],
    mode: str | None,
    rate: float,
) -> dict[str, Any]:
    o = ctx.o
    assert c.writer is not None
    clients = sum(live)
    start_id = await ctx.newest_id()
    recorder.begin(start_id, mode)
    requests = [
        load.post_request(
            c.writer.port, c.writer_visitors[i % len(c.writer_visitors)], "activity", i
        )
        for i in range(512)
    ]
    pool = await ctx.pool(c.writer.port, o.writer_conns)
    notices = await Notices().start(ctx.url, c.channel)
    lag = load.LoopLag()
    before = ctx.cpu_snapshot(server, c.writer)
    try:
        writes = await load.steady(pool, requests, rate, o.duration)
    finally:
        pool.close()
    sent_at = ctx.last_sent_at = writes.sent_at()
    want = len(sent_at) * clients

    def complete() -> bool:
        if recorder.received < want:
            return False
        return mode is None or sum(len(x) for x in recorder.frag_ids) >= want

    drained = await load.wait_until(complete, max(15.0, o.duration), 0.1)
    after = ctx.cpu_snapshot(server, c.writer)
    lag_ms = lag.stop()
    await notices.stop()
    recorder.cancel_timers()
    committed = {i: notices.activity[i] for i in sent_at if i in notices.activity}
    to_commit = np.array([committed[i] - sent_at[i] for i in committed])
    label = f"page/{mode}" if mode else "event"
    out: dict[str, Any] = {
        "writes_per_s": rate,
        "writes_sent": len(writes.status),
        "writes_ok": writes.ok,
        "write_ms": stats.summary_ms(
            np.frombuffer(writes.done, dtype="float64")
            - np.frombuffer(writes.sent, dtype="float64")
        ),
        "drained": drained,
        "bench_loop_lag_ms": lag_ms,
        "cpu": ctx.cpu_delta(before, after),
        "event": stats.delivery(sent_at, recorder.ids, recorder.times, live),
        "write_to_commit_ms": stats.summary_ms(to_commit),
        "commit_to_event": stats.delivery(committed, recorder.ids, recorder.times, live),
    }
    frames = out["event"].get("received", 0)
    busy = out["cpu"][f"{server.name}_cpu_s"] - ctx.idle_cpu_rate * out["cpu"]["wall_s"]
    out["cpu"]["server_us_per_frame"] = round(1e6 * max(0.0, busy) / max(1, frames), 2)
    if isinstance(server, procs.Balanced):  # the proxy's CPU, not in the above
        proxy_cpu = out["cpu"].get(f"{server.proxy.name}_cpu_s", 0.0)
        out["cpu"]["proxy_us_per_frame"] = round(1e6 * proxy_cpu / max(1, frames), 2)
        if mode:
            out["cpu"]["proxy_us_per_fragment"] = round(
                1e6 * proxy_cpu / max(1, recorder.frag_sent), 2
            )
    if mode:
        frag = stats.delivery(sent_at, recorder.frag_ids, recorder.frag_times, live)
        span = max(1e-9, recorder.frag_last - recorder.frag_first)
        ok = recorder.frag_sent - recorder.frag_failed
        frag["requests"] = recorder.frag_sent
        frag["failed"] = recorder.frag_failed
        frag["served_per_s"] = round(ok / span, 1)
        out["fragment"] = frag
    ev = out["event"]
    ctx.say(
        f"{c.key} {label}: delivery {ev.get('ratio')} event {ev.get('latency_ms')}"
        + (
            f" | +fragment {out['fragment']['latency_ms']} "
            f"{out['fragment']['served_per_s']}/s failed {recorder.frag_failed}"
            if mode
            else ""
        )
    )
    return out
