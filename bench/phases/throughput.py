"""Throughput (no streams): many concurrent writers through a 2-worker instance, then its
fragment capacity: what a page fetches, as fast as the instance answers."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench import load, net, stats
from bench.phases.context import BenchContext, Contender


async def throughput(ctx: BenchContext, c: Contender) -> None:
    """Many concurrent writers through the (2-worker) instance; fragment capacity."""
    o = ctx.o
    background = await ctx.wait_quiet()
    server = c.stream_server(ctx.url, 0, ctx.log_dir)
    try:
        await server.astart()
        visitors = await load.get_visitors(server.port, 8)
        pool = await ctx.pool(server.port, 4)
        warm = [load.post_request(server.port, v, "activity", i) for i, v in enumerate(visitors)]
        await load.steady(pool, warm, 50, len(warm) / 50)
        pool.close()
        out: dict[str, Any] = {"background_busy_pct": background}
        for kind in ("activity", "increment"):
            requests = [
                load.post_request(server.port, visitors[i % len(visitors)], kind, i)
                for i in range(256)
            ]
            pool = await ctx.pool(server.port, o.throughput_conns)
            before = ctx.cpu_snapshot(server)
            rate, writes = await load.closed_loop(pool, requests, o.throughput_seconds)
            cpu = ctx.cpu_delta(before, ctx.cpu_snapshot(server))
            pool.close()
            failed = len(writes.status) - writes.ok
            out[kind] = {
                "per_s": round(rate, 1),
                "failed": failed,
                "server_cpu_ms_per_request": round(
                    1000 * cpu[f"{server.name}_cpu_s"] / max(1, len(writes.status)), 2
                ),
                "cpu": cpu,
            }
            ctx.say(f"{c.key} {kind}: {rate:.0f}/s ({failed} failed)")
        ctx.results["throughput"][c.key] = out
        # Fragment capacity: what a page fetches, as fast as the server answers. An
        # up-to-date page asks for the newest one to three items after its cursor.
        newest = await ctx.newest_id()
        paths = {
            "item": [f"/fragments/activity/{newest - i}" for i in range(200)],
            "after": [f"/fragments/activity?after={newest - 1 - i % 3}" for i in range(3)],
            "counter": ["/fragments/counter"],
        }
        capacity: dict[str, Any] = {}
        for kind, kind_paths in paths.items():
            requests = [
                net.request_bytes(
                    "GET",
                    path,
                    server.port,
                    {"Cookie": visitors[0].cookie, "HX-Request": "true", "Accept": "text/html"},
                )
                for path in kind_paths
            ]
            pool = await ctx.pool(server.port, o.throughput_conns)
            before = ctx.cpu_snapshot(server)
            rate, writes = await load.closed_loop(pool, requests, o.throughput_seconds, False)
            cpu = ctx.cpu_delta(before, ctx.cpu_snapshot(server))
            pool.close()
            capacity[kind] = {
                "per_s": round(rate, 1),
                "server_cpu_ms_per_request": round(
                    1000 * cpu[f"{server.name}_cpu_s"] / max(1, len(writes.status)), 2
                ),
                "failed": len(writes.status) - writes.ok,
                "latency_ms": stats.summary_ms(
                    np.frombuffer(writes.done, dtype="float64")
                    - np.frombuffer(writes.sent, dtype="float64")
                ),
                "cpu": cpu,
            }
            ctx.say(f"{c.key} fragment capacity {kind}: {rate:.0f}/s")
        ctx.results["fragment_capacity"][c.key] = capacity
    finally:
        server.stop()
