"""`python -m bench soak`: hundreds of streams, real browsers and a writer through faults,
then a checker that proves nothing acknowledged or committed was lost (docs/reliability.md).

Every duration is bounded; every process started (cluster, PgBouncer, instances, link
proxies, Chromium) is stopped by its pid in `finally`, also on an error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from support.paths import REPO_ROOT
from support.ports import raise_open_file_limit

from bench import load
from bench.chaos import Chaos
from bench.checker import check, read_expected, read_facts, timing_notes, verdict
from bench.net import now
from bench.soak_clients import ErrorLog, StreamClient, Writer, start_cursor
from bench.soak_pages import Pages, converge
from bench.soak_report import chart, timeline
from bench.soak_topology import Topology

RESULTS = REPO_ROOT / "bench" / "results"


@dataclass
class SoakOptions:
    minutes: float = 2.0
    streams: int = 500
    pages: int = 3
    rate: float = 20.0  # posts per second
    increment_rate: float = 2.0
    seed: int = 1
    fault_gap: tuple[float, float] = (20.0, 30.0)
    first_fault_after: float = 12.0
    quiet_tail: float = 15.0  # no fault starts in the last this-many seconds of load
    stream_visitors: int = 25
    writer_visitors: int = 5
    settle_timeout: float = 90.0  # bound on waiting for every client to catch up
    page_target: float = 10.0  # pages should show the truth this soon after the last fault
    page_timeout: float = 60.0  # bound on polling them
    faults: bool = True
    fault_kinds: tuple[str, ...] = ()  # only these (default: every kind)
    chart: bool = True
    out_dir: Path = RESULTS

    @property
    def seconds(self) -> float:
        return self.minutes * 60


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


async def _connect_all(
    clients: list[StreamClient], stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    tasks = []
    for client in clients:
        tasks.append(asyncio.create_task(client.run(stop)))
        await asyncio.sleep(0.004)  # spread the opening burst a little
    return tasks


async def run_soak(options: SoakOptions) -> dict[str, Any]:
    raise_open_file_limit()
    stamp = _stamp()
    options.out_dir.mkdir(parents=True, exist_ok=True)
    topology = Topology(options.out_dir / "logs" / f"soak-{stamp}")
    pages = Pages()
    stop = asyncio.Event()
    errors = ErrorLog()
    clients: list[StreamClient] = []
    tasks: list[asyncio.Task[None]] = []
    rng = random.Random(options.seed)
    random.seed(options.seed)  # the clients' backoff jitter
    result: dict[str, Any] = {"options": {**asdict(options), "out_dir": None}, "started": stamp}
    try:
        setup_start = now()
        result["load_average_start"] = os.getloadavg()
        await topology.start()
        ports = topology.client_ports()
        a, b = ports[0], ports[1]
        via = ports[2] if len(ports) > 2 else b
        result["links"] = topology.links_available

        # Writers' and readers' identities come from GET /, as a browser's do.
        writer_visitors = await load.get_visitors(a, options.writer_visitors)
        writer = Writer(
            [a, b], writer_visitors, errors,
            rate=options.rate, increment_rate=options.increment_rate,
        )  # fmt: skip
        for serial in range(5):  # a feed that is not empty, so the cursors are not 0
            writer.submit(writer.posts, -1 - serial)
        await writer.drain(20)
        readers = await load.get_visitors(a, options.stream_visitors)
        # 2 of 5 streams on a, 2 on b, 1 on b through the client link.
        placement = [a, a, b, b, via]
        async with httpx.AsyncClient() as http:
            cursors = {v.cookie: await start_cursor(http, a, v.cookie) for v in readers}
        for index in range(options.streams):
            visitor = readers[index % len(readers)]
            port = placement[index % len(placement)]
            cursor = cursors[visitor.cookie]
            clients.append(StreamClient(index, port, visitor.cookie, cursor, errors))
        tasks = await _connect_all(clients, stop)
        connected = await load.wait_until(lambda: all(c.opens for c in clients), 90, step=0.1)
        if not connected:
            raise RuntimeError(
                f"only {sum(1 for c in clients if c.opens)} of {len(clients)} streams opened"
            )
        if options.pages:
            labels = [("a", a), ("b", b), ("b-via-client-link", via)][: options.pages]
            await pages.open(labels)
        result["setup_seconds"] = round(now() - setup_start, 1)

        # -- load and faults ---------------------------------------------------------------
        t0 = now()
        loop_lag = load.LoopLag()
        chaos = Chaos(topology, rng, options.fault_kinds)
        fault_window = max(0.0, options.seconds - options.quiet_tail)
        chaos_task = asyncio.create_task(
            chaos.run(fault_window, options.first_fault_after, options.fault_gap)
            if options.faults
            else asyncio.sleep(0)
        )
        await writer.run(options.seconds)
        writes_end = now()
        result["load_loop_lag_ms"] = loop_lag.stop()
        await asyncio.wait_for(chaos_task, timeout=240)
        await writer.drain(30)
        last_fault_end = max((f.end for f in chaos.records), default=t0)
        quiet_from = max(last_fault_end, writes_end)

        # -- settling: every client back and caught up (bounded) --------------------------
        facts = await read_facts(topology.direct_url)
        newest = facts.visible[-1] if facts.visible else 0
        settled = await load.wait_until(
            lambda: all(
                c.connected and c.high_water >= newest and not c.reread_pending for c in clients
            ),
            options.settle_timeout,
            step=0.2,
        )
        settle_seconds = round(now() - quiet_from, 2)
        await asyncio.gather(*(c.settle_reread(10) for c in clients))
        gate = asyncio.Semaphore(50)

        async with httpx.AsyncClient() as http:

            async def read_counter(client: StreamClient) -> None:
                async with gate:
                    await client.read_counter(http)

            await asyncio.gather(*(read_counter(c) for c in clients))
        page_results = (
            await converge(
                pages, lambda: read_expected(topology.direct_url), options.page_timeout,
                since=max(last_fault_end, writes_end),
            )
            if options.pages
            else []
        )  # fmt: skip

        # -- the check -------------------------------------------------------------------
        stop.set()
        facts = await read_facts(topology.direct_url)
        result["checker"] = check(clients, writer, facts, t0)
        result["settle"] = {
            "settled": settled,
            "seconds_after_quiet": settle_seconds,
            "last_fault_end_s": round(last_fault_end - t0, 2),
            "writes_end_s": round(writes_end - t0, 2),
        }
        result["pages"] = page_results
        result["errors"] = errors.counts()
        result["timeline"] = timeline(
            clients, writer, errors, chaos.records, t0, int(now() - t0) + 1
        )
        result["problems"] = verdict(result)
        result["timing_notes"] = timing_notes(result, options.page_target)
        result["load_average_end"] = os.getloadavg()
    finally:
        stop.set()
        for client in clients:
            client.close()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        with contextlib.suppress(Exception):
            await pages.close()
        await asyncio.to_thread(topology.stop)
    logs = topology.log_dir
    result["logs"] = str(logs.relative_to(REPO_ROOT) if logs.is_relative_to(REPO_ROOT) else logs)
    return result


def write(result: dict[str, Any], options: SoakOptions) -> tuple[Path, Path | None]:
    path = options.out_dir / f"soak-{result['started']}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    picture = chart(result, path.with_suffix(".png")) if options.chart else None
    return path, picture


def summary(result: dict[str, Any]) -> str:
    c = result["checker"]
    d = result["timeline"]["delivery"]
    lines = [
        f"streams {c['clients']} ({c['clients_complete']} complete), deliveries {c['deliveries']}, "
        f"reconnects {c['reconnects']}, resyncs {c['resyncs']} (re-read {c['reread_items']} items)",
        f"posts acknowledged {c['posts']['acknowledged']}, lost {len(c['posts']['lost'])}; "
        f"missing {c['missing']}, duplicates {c['duplicates']}, out of order {c['out_of_order']}",
        f"delivery lag p50 {d['lag_p50_ms']} ms, p99 {d['lag_p99_ms']} ms, "
        f"max {d['lag_max_ms']} ms",
        "faults: " + ", ".join(
            f"{f['kind']}@{f['start_s']:.0f}s ({f['end_s'] - f['start_s']:.1f} s)"
            for f in result["timeline"]["faults"]
        ),
        f"settled {result['settle']['seconds_after_quiet']} s after the last fault or write; "
        "pages: " + ", ".join(f"{p['label']} {p['after_s']} s" for p in result["pages"]),
        f"errors: {result['errors']}",
        f"load generator's loop lag: {result['load_loop_lag_ms']}; machine load average "
        f"{result['load_average_start'][0]:.1f} at start, "
        f"{result['load_average_end'][0]:.1f} at end",
        *result["timing_notes"],
        "PASS" if not result["problems"] else "FAIL: " + "; ".join(result["problems"]),
    ]  # fmt: skip
    return "\n".join(lines)


def run(options: SoakOptions) -> dict[str, Any]:
    """Run the soak on uvloop (as the benchmark does: one process holds every stream)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_soak(options))
