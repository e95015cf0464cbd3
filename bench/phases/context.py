"""What every phase shares: the run's options, database and results, the contenders, the
benchmark's own LISTEN, CPU snapshots, and waiting for a quiet machine."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from bench import load, procs
from bench.load import Visitor
from bench.net import Pool, now
from bench.options import Options


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

    def stream_server(self, url: str, max_streams: int, log_dir: Path) -> procs.Target:
        if self.app == "baseline":
            return procs.baseline(f"{self.key}-streams", url, 2, log_dir)
        if self.proxy == "nginx":
            return procs.ripple_behind_nginx(
                self.key,
                url,
                max_streams,
                log_dir,
                instances=2,
                workers=1,
                lock_timeout_ms=self.lock_timeout_ms,
            )
        return procs.ripple(f"{self.key}-streams", url, 2, max_streams, self.server, log_dir)


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


class BenchContext:
    """The state of one run that the phases read and add to."""

    def __init__(self, options: Options, log_dir: Path, results: dict[str, Any]) -> None:
        self.o = options
        self.url = ""
        self.db: asyncpg.Connection | None = None
        self.log_dir = log_dir
        self.results = results
        self.me = psutil.Process()
        self.idle_cpu_rate = 0.0  # the stream instance's CPU per second holding idle streams
        self.last_sent_at: dict[int, float] = {}  # the last phase's writes: id -> sent at

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    async def newest_id(self) -> int:
        assert self.db is not None
        return int(await self.db.fetchval("SELECT coalesce(max(id), 0) FROM activity"))

    async def counter_value(self) -> int:
        assert self.db is not None
        return int(await self.db.fetchval("SELECT value FROM counters WHERE id = 1"))

    async def pool(self, port: int, size: int) -> Pool:
        return await Pool(port, size).open()

    async def start_server(self, server: procs.Target) -> float:
        """Start `server` while waiting for a quiet machine; the busy percentage seen last."""
        background, _ = await asyncio.gather(self.wait_quiet(), server.astart())
        return background

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
