"""The peer mode's largest blocks: more streams than one process may open, so half are
opened here and half in a shard process (`bench.shard`); the open and event phases only,
their figures merged over both processes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np

from bench import net, stats
from bench.load import Recorder
from bench.net import now
from bench.phases.context import BenchContext, Contender
from bench.phases.streams import open_figures, prepare, settle
from bench.shard import Shard, latencies

if TYPE_CHECKING:
    from bench.fanin import FanIn


async def size_sharded(bench: FanIn, c: Contender, n: int) -> dict[str, Any]:
    """Half the N streams here, half in a shard process; its event phase via `bench`."""
    o = bench.o
    server = c.stream_server(bench.url, n, bench.log_dir)
    streams: list[net.SseStream] = []
    shard: Shard | None = None
    entry: dict[str, Any] = {}
    try:
        opening = await prepare(bench, server, n)
        mine = n // 2
        shard = Shard.start(
            server.port, opening.requests[mine:], bench.log_dir / f"shard-{server.port}.log"
        )
        recorder = Recorder(mine, server.port, opening.cookies[:mine], [], 1)
        t0 = now()
        (streams, failed), theirs = await asyncio.gather(
            net.open_streams(
                server.port, opening.requests[:mine], recorder, timeout=max(120.0, n / 40)
            ),
            shard.opened(timeout=max(180.0, n / 40 + 60)),
        )
        ramp = now() - t0
        await settle(bench, opening)
        live = [s.status == 200 and not s.closed for s in streams]
        total = sum(live) + theirs["open"]
        entry["open"] = open_figures(bench, opening, n, total, failed + theirs["failed"], ramp)
        entry["open"].update(open_here=sum(live), open_in_shard=theirs["open"])
        bench.say(f"{c.key}: opened {total}/{n} (shard {theirs}) in {ramp:.1f} s; {entry['open']}")
        bench.shard = shard
        entry["event"] = await bench.latency_phase(c, server, recorder, live, None, o.rate)
        entry["still_open"] = sum(
            1 for s, ok in zip(streams, live, strict=True) if ok and not s.closed
        ) + entry["event"]["event"].get("shard", {}).get("still_open", 0)
    finally:
        bench.shard = None
        for stream in streams:
            stream.close()
        if shard is not None:
            shard.stop()
        await asyncio.sleep(0.5)
        server.stop()
    return entry


async def merge_shard(
    ctx: BenchContext, shard: Shard, out: dict[str, Any], recorder: Recorder, live: list[bool]
) -> None:
    """The event figures over both processes' streams (this one's stay under "here")."""
    sent_at = ctx.last_sent_at
    path = str(ctx.log_dir / f"shard-{len(sent_at)}-{int(now() * 1000)}.npy")
    theirs = await shard.report(sent_at, path, max(15.0, ctx.o.duration))
    mine, got, duplicates = latencies(sent_at, recorder.ids, recorder.times, live)
    every = np.concatenate([mine, np.load(path)])
    expected = len(sent_at) * sum(live) + theirs["expected"]
    received = got + theirs["received"]
    here = out["event"]
    out["event"] = {
        "items": len(sent_at),
        "clients": sum(live) + theirs["expected"] // max(1, len(sent_at)),
        "received": received,
        "expected": expected,
        "duplicates": duplicates + theirs["duplicates"],
        "ratio": round(received / expected, 6) if expected else None,
        "latency_ms": stats.summary_ms(every),
        "here": here,
        "shard": theirs,
    }
    frames_here = here.get("received", 0)
    if received:
        out["cpu"]["server_us_per_frame"] = round(
            out["cpu"]["server_us_per_frame"] * frames_here / received, 2
        )
    ctx.say(f"both processes: delivery {out['event']['ratio']} {out['event']['latency_ms']}")
