"""One stream count N: a fresh stream instance, N streams opened (memory and CPU per stream
measured from a clean process), then the event, page and hammer phases with them held open."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import load, net, procs
from bench.load import Recorder
from bench.net import now
from bench.phases import fan_in
from bench.phases.context import BenchContext, Contender
from bench.phases.hammer import hammer as hammer_phase

if TYPE_CHECKING:
    from bench.run import Bench


@dataclass
class Opening:
    """A started stream instance, before its streams open: what they will send, and what
    the instance used before them."""

    server: procs.Target
    background: float  # machine busy % (others' load) when the block started
    cookies: list[str]
    requests: list[bytes]
    cpu0: float
    rss0: int
    proxy_rss0: int
    # Filled by `settle`, with the streams open:
    cpu1: float = 0.0
    rss1: int = 0
    proxy_rss1: int = 0

    @property
    def proxy(self) -> procs.Server | None:
        return self.server.proxy if isinstance(self.server, procs.Balanced) else None


async def prepare(ctx: BenchContext, server: procs.Target, n: int) -> Opening:
    """Start the instance, get its visitors, and build the N stream requests."""
    background = await ctx.start_server(server)
    visitors = await load.get_visitors(server.port, min(ctx.o.visitors, n))
    await asyncio.sleep(1.0)
    cpu0, rss0 = server.sample()
    proxy = server.proxy if isinstance(server, procs.Balanced) else None
    cursor = await ctx.newest_id()
    cookies = [visitors[i % len(visitors)].cookie for i in range(n)]
    return Opening(
        server=server,
        background=background,
        cookies=cookies,
        requests=net.stream_requests(server.port, cookies, cursor),
        cpu0=cpu0,
        rss0=rss0,
        proxy_rss0=proxy.sample()[1] if proxy else 0,
    )


async def settle(ctx: BenchContext, opening: Opening) -> None:
    """With the streams open: memory and CPU once presence settles, then the idle CPU rate."""
    server, proxy = opening.server, opening.proxy
    await asyncio.sleep(3.0)  # presence joins and their events settle
    opening.cpu1, opening.rss1 = server.sample()
    opening.proxy_rss1 = proxy.sample()[1] if proxy else 0
    await asyncio.sleep(2.0)  # the instance's own cost of holding the streams idle
    ctx.idle_cpu_rate = (server.sample()[0] - opening.cpu1) / 2.0


def open_figures(
    ctx: BenchContext, opening: Opening, n: int, total: int, failed: int, ramp: float
) -> dict[str, Any]:
    """The results' "open" entry: `total` of `n` streams open after `ramp` seconds."""
    o = opening
    figures: dict[str, Any] = {
        "requested": n,
        "open": total,
        "failed": failed,
        "ramp_s": round(ramp, 2),
        "rss_before_mib": round(o.rss0 / 2**20, 1),
        "rss_with_mib": round(o.rss1 / 2**20, 1),
        "kib_per_stream": round((o.rss1 - o.rss0) / 1024 / max(1, total), 2),
        "opens_per_s": round(total / max(ramp, 1e-9), 1),
        "open_cpu_ms_per_stream": round(1000 * (o.cpu1 - o.cpu0) / max(1, total), 2),
        "background_busy_pct": o.background,
        "idle_cpu_pct": round(100 * ctx.idle_cpu_rate, 1),
    }
    if o.proxy:
        figures.update(
            proxy_rss_before_mib=round(o.proxy_rss0 / 2**20, 1),
            proxy_rss_with_mib=round(o.proxy_rss1 / 2**20, 1),
            proxy_kib_per_stream=round((o.proxy_rss1 - o.proxy_rss0) / 1024 / max(1, total), 2),
        )
    return figures


async def size(
    bench: Bench, c: Contender, n: int, modes: list[str] | None = None, hammer: bool = True
) -> dict[str, Any]:
    """The block at N streams; phases go through `bench` (a subclass may change them)."""
    o = bench.o
    modes = o.page_modes if modes is None else modes
    server = c.stream_server(bench.url, n, bench.log_dir)
    streams: list[net.SseStream] = []
    entry: dict[str, Any] = {}
    try:
        opening = await prepare(bench, server, n)
        groups = math.ceil(n / o.fetch_group)
        recorder = Recorder(n, server.port, opening.cookies, [], o.fetch_group)
        t0 = now()
        streams, failed = await net.open_streams(
            server.port, opening.requests, recorder, timeout=max(120.0, n / 40)
        )
        ramp = now() - t0
        await settle(bench, opening)
        live = [s.status == 200 and not s.closed for s in streams]
        entry["open"] = open_figures(bench, opening, n, sum(live), failed, ramp)
        if c.fan_in:
            entry["instances"] = await fan_in.stream_split(server)
        bench.say(f"{c.key}: opened {sum(live)}/{n} in {ramp:.1f} s; {entry['open']}")
        if "instances" in entry:
            bench.say(f"{c.key}: streams per instance {entry['instances']}")
        entry["event"] = await bench.latency_phase(c, server, recorder, live, None, o.rate)
        for mode in modes if n <= o.page_max else []:
            recorder.pools = [await bench.pool(server.port, o.fetch_conns) for _ in range(groups)]
            try:
                marks = await fan_in.fragment_marks(server) if c.fan_in else None
                entry[f"page_{mode}"] = page = await bench.latency_phase(
                    c, server, recorder, live, mode, o.page_rate
                )
                if marks is not None:
                    page["fan_in"] = await fan_in.fan_in(server, marks, recorder, page)
                    bench.say(f"{c.key} page/{mode} fan-in: {page['fan_in']}")
            finally:
                for p in recorder.pools:
                    p.close()
        if hammer and (c.app == "ripple" or n <= o.baseline_hammer_max):
            recorder.pools = [await bench.pool(server.port, o.fetch_conns) for _ in range(groups)]
            try:
                entry["hammer"] = await hammer_phase(bench, c, server, recorder, live)
            finally:
                for p in recorder.pools:
                    p.close()
        entry["still_open"] = sum(
            1 for s, ok in zip(streams, live, strict=True) if ok and not s.closed
        )
    finally:
        for stream in streams:
            stream.close()
        await asyncio.sleep(0.5)
        server.stop()
    return entry
