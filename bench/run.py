"""One benchmark run: database, servers, phases (`bench.phases`), and the results file.

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
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import asyncpg
from support import database
from support.paths import REPO_ROOT
from support.ports import raise_open_file_limit

from bench import load, procs
from bench.machine import app_revision, machine
from bench.options import Options
from bench.phases import direct, latency, proxy, streams, throughput
from bench.phases.context import BenchContext, Contender

RESULTS = Path(__file__).resolve().parent / "results"
SERVER_SETTINGS = {  # results key: PostgreSQL setting
    "postgres": "server_version",
    "max_connections": "max_connections",
    "synchronous_commit": "synchronous_commit",
}


class Bench(BenchContext):
    """The usual blocks: direct reference, throughput, then every N for every contender."""

    def __init__(self, options: Options) -> None:
        super().__init__(
            options,
            RESULTS / "logs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
            {
                "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "options": asdict(options),
                "machine": machine(),
                "app_revision": app_revision(),
                "throughput": {},
                "fragment_capacity": {},
                "sizes": {},
                "notes": [],
            },
        )

    async def main(self) -> dict[str, Any]:
        o = self.o
        facts = self.results["machine"]
        facts["open_file_limit"] = raise_open_file_limit()
        facts["load_at_start"] = round(os.getloadavg()[0], 2)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.url = await database.create_database(o.admin_url, prefix="ripple_bench_")
        name = database.database_name(self.url)
        self.say(f"database {name} created; migrating")
        try:
            await asyncio.to_thread(database.migrate, self.url)
            self.db = await asyncpg.connect(self.url)
            shown = await database.settings(self.url, *SERVER_SETTINGS.values())
            facts.update({key: shown[setting] for key, setting in SERVER_SETTINGS.items()})
            await self._run_all()
        finally:
            facts["load_at_end"] = round(os.getloadavg()[0], 2)
            if self.db is not None:
                with contextlib.suppress(Exception):
                    await self.db.close()
            procs.stop_all()
            with contextlib.suppress(Exception):
                await database.drop_database(self.url, o.admin_url)
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
            await proxy.run_proxy(self)
            return
        contenders = self.contenders()
        for c in contenders:
            ripple_writer = next((x for x in contenders if x.app == "ripple" and x.writer), None)
            if c.app == "ripple" and c.server == "granian" and ripple_writer is not None:
                c.writer, c.writer_visitors = ripple_writer.writer, ripple_writer.writer_visitors
                continue
            await self.start_writer(c)
        self.say("direct asyncpg references")
        self.results["throughput"]["direct_background_busy_pct"] = await self.wait_quiet()
        self.results["throughput"]["direct"] = await direct.direct_reference(self)
        for c in contenders:
            await throughput.throughput(self, c)
        for n in o.sizes:
            for c in contenders:
                self.say(f"--- {c.key}: {n} streams")
                entry = await self.size(c, n)
                self.results["sizes"].setdefault(str(n), {})[c.key] = entry

    async def start_writer(self, c: Contender) -> None:
        """The contender's one-worker writer instance, with its visitors, warmed."""
        if c.app == "ripple":
            c.writer = procs.ripple(f"{c.app}-writer", self.url, 1, 0, "uvicorn", self.log_dir)
        else:
            c.writer = procs.baseline(f"{c.app}-writer", self.url, 1, self.log_dir)
        await c.writer.astart()
        c.writer_visitors = await load.get_visitors(c.writer.port, 8)
        await self.warm_writer(c)

    # The phases a subclass may change (bench.fanin's peer mode does): the phase modules'
    # functions, bound as methods.
    size = streams.size
    latency_phase = latency.latency_phase


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
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    os.chdir(root)
