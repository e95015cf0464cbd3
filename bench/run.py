"""One benchmark run: database, servers, phases, and the results file.

For each contender (Ripple under uvicorn, optionally under granian, and the naive
baseline) a second one-worker instance takes every write, so each event crosses
instances through PostgreSQL. For every stream count N a fresh stream instance is
started (so memory per stream is measured from a clean process), N streams are
opened, then the phases run one after another with those streams held open.

With `--proxy nginx` the blocks are instead one 2-worker instance reached directly and
two 1-worker instances behind nginx (balanced streams, cached item fragments), with
the same phases and clients; results go under the "proxy" key.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import psutil

from bench import load, net, procs, stats
from bench.load import Recorder, Visitor
from bench.net import Pool, now

RESULTS = Path(__file__).resolve().parent / "results"
FEED_LOCK_KEY = 0x52_49_50_50_4C_45  # the app's feed lock (app.services.feed)
ITEM_FRAGMENTS = 'ripple_fragment_requests_total{kind="activity"}'  # app.metrics


@dataclass
class Options:
    sizes: list[int] = field(default_factory=lambda: [100, 1000, 3000, 5000])
    duration: float = 20.0  # seconds of writes per latency phase
    rate: float = 20.0  # activity posts per second in the event phase
    page_rate: float = 2.0  # activity posts per second in the page phases
    page_modes: list[str] = field(default_factory=lambda: ["item", "page"])
    page_max: int = 1000  # page phases only up to this many streams (fan-in saturates above)
    hammer_rate: float = 1000.0
    hammer_seconds: float = 5.0
    baseline_hammer_max: int = 100  # the baseline queues every increment for every stream
    server: str = "uvicorn"  # ripple's stream instance: uvicorn, granian or both
    baseline: bool = True
    visitors: int = 20  # visitors shared by the streams
    fetch_group: int = 1  # clients sharing one fetch pool (1: a connection per page)
    fetch_conns: int = 1  # keep-alive connections per fetch pool
    writer_conns: int = 16
    hammer_conns: int = 32
    throughput_seconds: float = 5.0
    throughput_conns: int = 32
    quiet_below: float = 40.0  # percent machine CPU busy (before a block starts)
    quiet_wait: float = 180.0  # seconds to wait for that at most
    admin_url: str = procs.DEFAULT_ADMIN_URL
    quick: bool = False
    proxy: str | None = None  # "nginx": the proxy blocks instead of the usual ones
    proxy_lock_timeout_ms: int = 100  # nginx proxy_cache_lock_timeout: what a waiter waits
    peer: str | None = None  # "node": Ripple against the Node.js peer (bench/fanin.py)
    peer_rounds: int = 2  # turns each server gets at each N in that mode
    peer_servers: list[str] = field(default_factory=lambda: ["ripple", "node"])  # in turn
    profile: bool = False  # one more profiled turn each (py-spy, V8) in that mode

    def use_proxy(self, proxy: str) -> None:
        """The proxy mode's defaults (command-line options still override them)."""
        self.proxy = proxy
        if not self.quick:
            self.sizes = [100, 1000, 3000]
            self.page_max = 3000  # the fan-in the proxy absorbs is the point of the mode

    def use_peer(self, peer: str) -> None:
        """The peer mode's defaults (command-line options still override them)."""
        self.peer = peer
        self.page_modes = ["page"]
        self.rate = 5.0
        if not self.quick:
            self.sizes = [1000, 10000, 20000]

    @classmethod
    def quick_defaults(cls) -> Options:
        return cls(
            sizes=[50, 200],
            duration=4.0,
            hammer_seconds=2.0,
            hammer_rate=500.0,
            throughput_seconds=2.0,
            quiet_wait=0.0,
            quick=True,
        )


@dataclass
class Contender:
    key: str  # ripple, ripple-granian, baseline
    app: str  # ripple or baseline
    server: str  # uvicorn or granian
    channel: str
    writer: procs.Server | None = None
    writer_visitors: list[Visitor] = field(default_factory=list)
    proxy: str | None = None  # "nginx": two 1-worker instances behind nginx
    fan_in: bool = False  # count the fragment requests that reached the instances
    lock_timeout_ms: int = 100

    def stream_server(self, url: str, max_streams: int) -> procs.Target:
        if self.app == "baseline":
            return procs.baseline(f"{self.key}-streams", url, 2)
        if self.proxy == "nginx":
            return procs.ripple_behind_nginx(
                self.key,
                url,
                max_streams,
                instances=2,
                workers=1,
                lock_timeout_ms=self.lock_timeout_ms,
            )
        return procs.ripple(f"{self.key}-streams", url, 2, max_streams, self.server)


class Notices:
    """The benchmark's own LISTEN: when PostgreSQL delivered each notification (≈ commit).

    Splits write → event into write → commit (the writer's path) and commit → event (the
    fan-out path). Its timestamps are taken on the same event loop as the clients'.
    """

    def __init__(self) -> None:
        self.activity: dict[int, float] = {}
        self.counter: list[float] = []
        self.conn: asyncpg.Connection | None = None

    async def start(self, url: str, channel: str) -> Notices:
        # On a shared PostgreSQL the connection slots can be all taken for a moment: retry
        # (bounded) rather than lose the run.
        for attempt in range(30):
            try:
                self.conn = await asyncpg.connect(url)
                break
            except asyncpg.TooManyConnectionsError:
                if attempt == 29:
                    raise
                await asyncio.sleep(1.0)
        assert self.conn is not None
        await self.conn.add_listener(channel, self._heard)
        return self

    def _heard(self, _c: Any, _p: int, _ch: str, payload: str) -> None:
        at = now()
        kind, _, ref = payload.partition(":")
        if kind == "activity" and ref.isdigit():
            self.activity.setdefault(int(ref), at)
        elif kind == "counter":
            self.counter.append(at)

    async def stop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()


def app_revision() -> str:
    """The commit measured, with `-dirty` if the working tree differs from it.

    A run from an exported snapshot (no `.git`) names it in RIPPLE_BENCH_REVISION.
    """
    import subprocess

    if os.environ.get("RIPPLE_BENCH_REVISION"):
        return os.environ["RIPPLE_BENCH_REVISION"]
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--exclude", "*"],
            cwd=procs.ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    freq = psutil.cpu_freq()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": psutil.cpu_count(logical=True),
        "cpu_model": model,
        "cpu_mhz": round(freq.current) if freq else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


class Bench:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.url = ""
        self.db: asyncpg.Connection | None = None
        self.log_dir = RESULTS / "logs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.results: dict[str, Any] = {
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "options": asdict(options),
            "machine": machine(),
            "app_revision": app_revision(),
            "throughput": {},
            "fragment_capacity": {},
            "sizes": {},
            "notes": [],
        }
        self.me = psutil.Process()
        self.idle_cpu_rate = 0.0
        self.last_sent_at: dict[int, float] = {}  # the last phase's writes: id -> sent at

    # -- helpers ----------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    async def newest_id(self) -> int:
        assert self.db is not None
        return int(await self.db.fetchval("SELECT coalesce(max(id), 0) FROM activity"))

    async def counter_value(self) -> int:
        assert self.db is not None
        return int(await self.db.fetchval("SELECT value FROM counters WHERE id = 1"))

    def cpu_snapshot(self, *servers: procs.Target) -> dict[str, float]:
        mine = self.me.cpu_times()
        total = psutil.cpu_times()
        snap = {
            "bench": mine.user + mine.system,
            "machine_busy": total.user + total.system + total.nice + total.irq + total.softirq,
            "machine_all": sum(total),
            "t": now(),
        }
        for server in servers:
            snap[server.name] = server.sample()[0]
            if isinstance(server, procs.Balanced):  # each instance and the proxy as well
                for part in server.parts():
                    snap[part.name] = part.sample()[0]
        return snap

    @staticmethod
    def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        wall = after["t"] - before["t"]
        out = {
            "wall_s": round(wall, 2),
            "bench_cpu_s": round(after["bench"] - before["bench"], 2),
            "machine_busy_pct": round(
                100
                * (after["machine_busy"] - before["machine_busy"])
                / max(1e-9, after["machine_all"] - before["machine_all"]),
                1,
            ),
        }
        for key in before:
            if key not in ("bench", "machine_busy", "machine_all", "t"):
                out[f"{key}_cpu_s"] = round(after[key] - before[key], 2)
        return out

    async def wait_quiet(self) -> float:
        """Wait (bounded) until the machine's other load is below `quiet_below` percent.

        The machine is shared; a phase that starts while something else saturates both
        cores measures that something. Returns the busy percentage seen last.
        """
        o = self.o
        end = now() + o.quiet_wait
        while True:
            busy = await asyncio.to_thread(psutil.cpu_percent, 2.0)
            if busy < o.quiet_below or now() >= end:
                if busy >= o.quiet_below:
                    self.say(f"machine still {busy:.0f}% busy; going on anyway")
                return round(busy, 1)
            self.say(f"machine {busy:.0f}% busy with other work; waiting")

    async def pool(self, port: int, size: int) -> Pool:
        return await Pool(port, size).open()

    # -- the run ----------------------------------------------------------------------

    async def main(self) -> dict[str, Any]:
        o = self.o
        self.results["machine"]["open_file_limit"] = procs.raise_open_file_limit()
        self.results["machine"]["load_at_start"] = round(os.getloadavg()[0], 2)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        name, self.url = await procs.create_database(o.admin_url)
        self.say(f"database {name} created; migrating")
        try:
            procs.migrate(self.url)
            self.db = await asyncpg.connect(self.url)
            self.results["machine"].update(await procs.server_facts(self.url))
            await self._run_all()
        finally:
            self.results["machine"]["load_at_end"] = round(os.getloadavg()[0], 2)
            if self.db is not None:
                with contextlib.suppress(Exception):
                    await self.db.close()
            procs.stop_all()
            with contextlib.suppress(Exception):
                await procs.drop_database(o.admin_url, name)
                self.say(f"database {name} dropped")
        return self.results

    def contenders(self) -> list[Contender]:
        found = []
        if self.o.server in ("uvicorn", "both"):
            found.append(Contender("ripple", "ripple", "uvicorn", "ripple"))
        if self.o.server in ("granian", "both"):
            found.append(Contender("ripple-granian", "ripple", "granian", "ripple"))
        if self.o.baseline:
            found.append(Contender("baseline", "baseline", "uvicorn", "ripple_baseline"))
        return found

    async def _run_all(self) -> None:
        o = self.o
        if o.proxy:
            await self._run_proxy()
            return
        contenders = self.contenders()
        for c in contenders:
            if (
                c.app == "ripple"
                and c.server == "granian"
                and any(x.app == "ripple" and x.writer for x in contenders)
            ):
                c.writer = next(x.writer for x in contenders if x.app == "ripple" and x.writer)
                c.writer_visitors = next(x.writer_visitors for x in contenders if x.writer)
                continue
            await self.start_writer(c)
        self.say("direct asyncpg references")
        self.results["throughput"]["direct_background_busy_pct"] = await self.wait_quiet()
        self.results["throughput"]["direct"] = await self.direct_reference()
        for c in contenders:
            await self.throughput(c)
        for n in o.sizes:
            for c in contenders:
                self.say(f"--- {c.key}: {n} streams")
                entry = await self.size(c, n)
                self.results["sizes"].setdefault(str(n), {})[c.key] = entry

    async def start_writer(self, c: Contender) -> None:
        """The contender's one-worker writer instance, with its visitors, warmed."""
        if c.app == "ripple":
            c.writer = procs.ripple(f"{c.app}-writer", self.url, 1, 0, "uvicorn")
        else:
            c.writer = procs.baseline(f"{c.app}-writer", self.url, 1)
        c.writer.start(self.log_dir)
        await c.writer.wait_ready()
        c.writer_visitors = await load.get_visitors(c.writer.port, 8)
        await self.warm_writer(c)

    async def _run_proxy(self) -> None:
        """At each N: one 2-worker instance reached directly, then two 1-worker instances
        behind nginx; open, event and item-page phases, the same clients for both."""
        o = self.o
        binary = procs.find_nginx()
        direct = Contender("ripple", "ripple", "uvicorn", "ripple", fan_in=True)
        proxied = Contender(
            "ripple-nginx",
            "ripple",
            "uvicorn",
            "ripple",
            proxy="nginx",
            fan_in=True,
            lock_timeout_ms=o.proxy_lock_timeout_ms,
        )
        await self.start_writer(direct)
        proxied.writer, proxied.writer_visitors = direct.writer, direct.writer_visitors
        modes = [m for m in o.page_modes if m == "item"]
        section: dict[str, Any] = {
            "proxy": o.proxy,
            "nginx_version": procs.nginx_version(binary),
            "nginx_worker_processes": procs.NGINX_WORKER_PROCESSES,
            "cache_lock_timeout_ms": o.proxy_lock_timeout_ms,
            "instances": 2,
            "workers_per_instance": 1,
            "direct_workers": 2,
            "page_modes": modes,
            "sizes": {},
        }
        self.results["proxy"] = section
        for n in o.sizes:
            for c in (direct, proxied):
                self.say(f"--- {c.key}: {n} streams")
                entry = await self.size(c, n, modes=modes, hammer=False)
                section["sizes"].setdefault(str(n), {})[c.key] = entry

    async def warm_writer(self, c: Contender) -> None:
        """One post per writer visitor, so no 'joined' item appears during a phase."""
        assert c.writer is not None
        pool = await self.pool(c.writer.port, 4)
        try:
            requests = [
                load.post_request(c.writer.port, v, "activity", i)
                for i, v in enumerate(c.writer_visitors)
            ]
            await load.steady(pool, requests, 50, len(requests) / 50)
        finally:
            pool.close()

    # -- throughput (no streams) ------------------------------------------------------

    async def direct_reference(self) -> dict[str, float]:
        """The app's write and read statements straight through asyncpg (no HTTP, no ORM).

        `post` and `increment` have the shape the app sends (one statement in its own
        transaction: the feed lock as a subquery, the insert, the NOTIFY in RETURNING);
        the others take one part away, so the ratios show what each part costs.
        """
        o = self.o
        author = uuid.uuid4()
        assert self.db is not None
        await self.db.execute("INSERT INTO visitors (id, name) VALUES ($1, 'Bench Direct')", author)
        newest = await self.newest_id()
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

        pool = await asyncpg.create_pool(self.url, min_size=16, max_size=16)
        rounds: dict[str, list[float]] = {}
        try:
            # Short rounds, interleaved, median kept: the machine's other load drifts.
            for _, key in itertools.product(range(3), statements):
                rate = await self._closed_loop_db(pool, op(key), o.throughput_seconds / 3, 16)
                rounds.setdefault(key, []).append(rate)
        finally:
            await pool.close()
        out = {key: statistics.median(rates) for key, rates in rounds.items()}
        self.say(f"direct: {out}")
        return out

    @staticmethod
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

    async def throughput(self, c: Contender) -> None:
        """Many concurrent writers through the (2-worker) instance; fragment capacity."""
        o = self.o
        background = await self.wait_quiet()
        server = c.stream_server(self.url, 0)
        server.start(self.log_dir)
        try:
            await server.wait_ready()
            visitors = await load.get_visitors(server.port, 8)
            pool = await self.pool(server.port, 4)
            warm = [
                load.post_request(server.port, v, "activity", i) for i, v in enumerate(visitors)
            ]
            await load.steady(pool, warm, 50, len(warm) / 50)
            pool.close()
            out: dict[str, Any] = {"background_busy_pct": background}
            for kind in ("activity", "increment"):
                requests = [
                    load.post_request(server.port, visitors[i % len(visitors)], kind, i)
                    for i in range(256)
                ]
                pool = await self.pool(server.port, o.throughput_conns)
                before = self.cpu_snapshot(server)
                rate, writes = await load.closed_loop(pool, requests, o.throughput_seconds)
                cpu = self.cpu_delta(before, self.cpu_snapshot(server))
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
                self.say(f"{c.key} {kind}: {rate:.0f}/s ({failed} failed)")
            self.results["throughput"][c.key] = out
            # Fragment capacity: what a page fetches, as fast as the server answers. An
            # up-to-date page asks for the newest one to three items after its cursor.
            newest = await self.newest_id()
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
                pool = await self.pool(server.port, o.throughput_conns)
                before = self.cpu_snapshot(server)
                rate, writes = await load.closed_loop(pool, requests, o.throughput_seconds, False)
                cpu = self.cpu_delta(before, self.cpu_snapshot(server))
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
                self.say(f"{c.key} fragment capacity {kind}: {rate:.0f}/s")
            self.results["fragment_capacity"][c.key] = capacity
        finally:
            server.stop()

    # -- one stream count -------------------------------------------------------------

    async def size(
        self, c: Contender, n: int, modes: list[str] | None = None, hammer: bool = True
    ) -> dict[str, Any]:
        o = self.o
        assert c.writer is not None
        modes = o.page_modes if modes is None else modes
        server = c.stream_server(self.url, n)
        proxy = server.proxy if isinstance(server, procs.Balanced) else None
        streams: list[net.SseStream] = []
        entry: dict[str, Any] = {}
        try:
            server.start(self.log_dir)
            background = await self.wait_quiet()
            await server.wait_ready()
            visitors = await load.get_visitors(server.port, min(o.visitors, n))
            await asyncio.sleep(1.0)
            cpu0, rss0 = server.sample()
            proxy_rss0 = proxy.sample()[1] if proxy else 0
            cursor = await self.newest_id()
            cookies = [visitors[i % len(visitors)].cookie for i in range(n)]
            requests = net.stream_requests(server.port, cookies, cursor)
            groups = math.ceil(n / o.fetch_group)
            recorder = Recorder(n, server.port, cookies, [], o.fetch_group)
            t0 = now()
            streams, failed = await net.open_streams(
                server.port, requests, recorder, timeout=max(120.0, n / 40)
            )
            ramp = now() - t0
            await asyncio.sleep(3.0)  # presence joins and their events settle
            cpu1, rss1 = server.sample()
            proxy_rss1 = proxy.sample()[1] if proxy else 0
            await asyncio.sleep(2.0)  # the instance's own cost of holding the streams idle
            self.idle_cpu_rate = (server.sample()[0] - cpu1) / 2.0
            live = [s.status == 200 and not s.closed for s in streams]
            entry["open"] = {
                "requested": n,
                "open": sum(live),
                "failed": failed,
                "ramp_s": round(ramp, 2),
                "rss_before_mib": round(rss0 / 2**20, 1),
                "rss_with_mib": round(rss1 / 2**20, 1),
                "kib_per_stream": round((rss1 - rss0) / 1024 / max(1, sum(live)), 2),
                "opens_per_s": round(sum(live) / max(ramp, 1e-9), 1),
                "open_cpu_ms_per_stream": round(1000 * (cpu1 - cpu0) / max(1, sum(live)), 2),
                "background_busy_pct": background,
                "idle_cpu_pct": round(100 * self.idle_cpu_rate, 1),
            }
            if proxy:
                entry["open"].update(
                    proxy_rss_before_mib=round(proxy_rss0 / 2**20, 1),
                    proxy_rss_with_mib=round(proxy_rss1 / 2**20, 1),
                    proxy_kib_per_stream=round(
                        (proxy_rss1 - proxy_rss0) / 1024 / max(1, sum(live)), 2
                    ),
                )
            if c.fan_in:
                entry["instances"] = await self.stream_split(server)
            self.say(f"{c.key}: opened {sum(live)}/{n} in {ramp:.1f} s; {entry['open']}")
            if "instances" in entry:
                self.say(f"{c.key}: streams per instance {entry['instances']}")
            entry["event"] = await self.latency_phase(c, server, recorder, live, None, o.rate)
            for mode in modes if n <= o.page_max else []:
                recorder.pools = [
                    await self.pool(server.port, o.fetch_conns) for _ in range(groups)
                ]
                try:
                    marks = await self.fragment_marks(server) if c.fan_in else None
                    entry[f"page_{mode}"] = page = await self.latency_phase(
                        c, server, recorder, live, mode, o.page_rate
                    )
                    if marks is not None:
                        page["fan_in"] = await self.fan_in(server, marks, recorder, page)
                        self.say(f"{c.key} page/{mode} fan-in: {page['fan_in']}")
                finally:
                    for p in recorder.pools:
                        p.close()
            if hammer and (c.app == "ripple" or n <= o.baseline_hammer_max):
                recorder.pools = [
                    await self.pool(server.port, o.fetch_conns) for _ in range(groups)
                ]
                try:
                    entry["hammer"] = await self.hammer(c, server, recorder, live)
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

    # -- through a proxy: where the streams landed, what reached the instances ------------

    @staticmethod
    def _instances(server: procs.Target) -> list[procs.Server]:
        return server.instances if isinstance(server, procs.Balanced) else [server]

    async def stream_split(self, server: procs.Target) -> list[dict[str, Any]]:
        """Each instance's own count of its open streams (its /metrics gauge)."""
        found = []
        for instance in self._instances(server):
            metrics = await procs.scrape_metrics(instance.port)
            found.append(
                {
                    "name": instance.name,
                    "workers": instance.workers,
                    "open_streams": int(metrics.get("ripple_open_streams", -1)),
                    "streams_opened": int(metrics.get("ripple_streams_opened_total", -1)),
                }
            )
        return found

    async def fragment_marks(self, server: procs.Target) -> dict[str, Any]:
        """Item fragments each instance has answered so far, and the proxy log's length."""
        counts = {}
        for instance in self._instances(server):
            metrics = await procs.scrape_metrics(instance.port)
            counts[instance.name] = metrics.get(ITEM_FRAGMENTS, 0.0)
        log = server.proxy.log_size() if isinstance(server, procs.Balanced) else 0
        return {"instances": counts, "log": log}

    async def fan_in(
        self,
        server: procs.Target,
        before: dict[str, Any],
        recorder: Recorder,
        page: dict[str, Any],
    ) -> dict[str, Any]:
        """Item fetches the clients made against those that reached an instance."""
        await asyncio.sleep(0.5)  # nginx logs a request just after its answer went out
        after = await self.fragment_marks(server)
        reached = {
            name: round(after["instances"][name] - count)
            for name, count in before["instances"].items()
        }
        total = sum(reached.values())
        items = page.get("fragment", {}).get("items") or 0
        out: dict[str, Any] = {
            "client_requests": recorder.frag_sent,
            "client_failed": recorder.frag_failed,
            "items": items,
            "reached_instances": total,
            "per_instance": reached,
            "absorbed_x": round(recorder.frag_sent / total, 1) if total else None,
            "instance_requests_per_item": round(total / items, 2) if items else None,
        }
        if isinstance(server, procs.Balanced):
            logged = server.proxy.cache_statuses(before["log"])
            out["proxy_log"] = logged
            hits = logged["cache"].get("HIT", 0)
            out["proxy_hit_ratio"] = round(hits / max(1, sum(logged["cache"].values())), 4)
        return out

    async def latency_phase(
        self,
        c: Contender,
        server: procs.Target,
        recorder: Recorder,
        live: list[bool],
        mode: str | None,
        rate: float,
    ) -> dict[str, Any]:
        o = self.o
        assert c.writer is not None
        clients = sum(live)
        start_id = await self.newest_id()
        recorder.begin(start_id, mode)
        requests = [
            load.post_request(
                c.writer.port, c.writer_visitors[i % len(c.writer_visitors)], "activity", i
            )
            for i in range(512)
        ]
        pool = await self.pool(c.writer.port, o.writer_conns)
        notices = await Notices().start(self.url, c.channel)
        lag = load.LoopLag()
        before = self.cpu_snapshot(server, c.writer)
        try:
            writes = await load.steady(pool, requests, rate, o.duration)
        finally:
            pool.close()
        sent_at = self.last_sent_at = writes.sent_at()
        want = len(sent_at) * clients

        def complete() -> bool:
            if recorder.received < want:
                return False
            return mode is None or sum(len(x) for x in recorder.frag_ids) >= want

        drained = await load.wait_until(complete, max(15.0, o.duration), 0.1)
        after = self.cpu_snapshot(server, c.writer)
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
            "cpu": self.cpu_delta(before, after),
            "event": stats.delivery(sent_at, recorder.ids, recorder.times, live),
            "write_to_commit_ms": stats.summary_ms(to_commit),
            "commit_to_event": stats.delivery(committed, recorder.ids, recorder.times, live),
        }
        frames = out["event"].get("received", 0)
        busy = out["cpu"][f"{server.name}_cpu_s"] - self.idle_cpu_rate * out["cpu"]["wall_s"]
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
        self.say(
            f"{c.key} {label}: delivery {ev.get('ratio')} event {ev.get('latency_ms')}"
            + (
                f" | +fragment {out['fragment']['latency_ms']} "
                f"{out['fragment']['served_per_s']}/s failed {recorder.frag_failed}"
                if mode
                else ""
            )
        )
        return out

    async def hammer(
        self, c: Contender, server: procs.Target, recorder: Recorder, live: list[bool]
    ) -> dict[str, Any]:
        o = self.o
        assert c.writer is not None
        notices = await Notices().start(self.url, c.channel)
        commits = notices.counter
        start_value = await self.counter_value()
        recorder.begin(1 << 62, None, counting=True)
        requests = [
            load.post_request(c.writer.port, v, "increment", i)
            for i, v in enumerate(c.writer_visitors)
        ]
        pool = await self.pool(c.writer.port, o.hammer_conns)
        lag = load.LoopLag()
        before = self.cpu_snapshot(server, c.writer)
        try:
            writes = await load.steady(
                pool, requests, o.hammer_rate, o.hammer_seconds, 20.0, o.hammer_conns
            )
        finally:
            pool.close()
        await asyncio.sleep(1.0)  # anything still in flight when the pool closed has landed
        final = await self.counter_value()
        clients = [i for i, ok in enumerate(live) if ok]
        # Quiet: no client has had a counter event for a second (bounded).
        quiet = await load.wait_until(
            lambda: now() - recorder.counter_last > 1.0, min(60.0, 10.0 + len(clients) / 200)
        )
        after = self.cpu_snapshot(server, c.writer)
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
                if recorder.counter_times[i]
                and recorder.counter_times[i][-1] >= last_commit - slack
            ),
            "events_per_client_mean": round(sum(counts) / max(1, len(counts)), 1),
            "max_events_in_any_second": max(rates, default=0),
            "clients_over_10_per_s": sum(1 for r in rates if r > 10),
            "min_gap_ms": gaps["min"],
            "gap_p1_ms": gaps["p1"],
            "gaps_under_90ms": gaps["under_90"],
            "bench_loop_lag_ms": lag_ms,
            "cpu": self.cpu_delta(before, after),
        }
        self.say(f"{c.key} hammer: {out}")
        return out


def write_results(results: dict[str, Any], prefix: str = "") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{prefix}{stamp}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


def run(options: Options) -> dict[str, Any]:
    import uvloop

    from bench.fanin import FanIn  # it subclasses Bench

    bench = FanIn(options) if options.peer else Bench(options)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return runner.run(bench.main())
        finally:
            procs.stop_all()


def ensure_cwd_importable() -> None:
    root = str(procs.ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    os.chdir(root)
