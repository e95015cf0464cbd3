"""`python -m bench run --peer node`: Ripple against a Node.js peer of the same design.

At each N the two servers take turns (Ripple, Node, Ripple, Node with `--peer-rounds 2`),
each a fresh 2-worker instance that takes every request of the block: N streams, the
activity posts (so a POST competes with the pages' fetches, as on one instance in
production) and, up to `--page-max` streams, the pages' fetches in `page` mode (a live
event's item by its URL; `?after=` for bursts, plus one catch-up per page at a random
moment of the phase, as after a reconnect or a resync). With `--profile`, the last turn
of each server has a profiler attached over each phase's writes (py-spy for Ripple, V8's
sampler for Node); it costs a few per cent, and the turn is marked in the results.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import load, node, procs, sendcost, stats
from bench.limits import raise_limits, restore_ports
from bench.load import Recorder
from bench.options import Options
from bench.phases.context import Contender
from bench.phases.profiled import start_profile
from bench.phases.sharded import merge_shard, size_sharded
from bench.run import Bench
from bench.shard import Shard

SERVERS = ("ripple", "node", "ripple-gc-default")  # the last: Ripple with CPython's GC defaults


@dataclass
class PeerContender(Contender):
    """Its stream instance takes the writes too (its writer is set by `latency_phase`)."""

    def stream_server(self, url: str, max_streams: int, log_dir: Path) -> procs.Target:
        if self.key == "ripple-gc-default":  # app.gcpolicy switched off: the before
            server = procs.ripple(f"{self.key}-streams", url, 2, max_streams, "uvicorn", log_dir)
            server.env["RIPPLE_GC_POLICY"] = "default"
            return server
        if self.app == "node":
            server = node.peer(f"{self.key}-streams", url, 2, log_dir)
            directory = tempfile.mkdtemp(prefix="ripple-bench-node-prof-")
            server.env["NODE_PEER_PROFILE_DIR"] = directory  # for a profiled turn
            server.temp_dirs.append(directory)
            return server
        return procs.ripple(f"{self.key}-streams", url, 2, max_streams, "uvicorn", log_dir)


class FanIn(Bench):
    """The blocks of the peer mode; results under "peer" in the results file."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.profiling = False
        self.block: dict[str, Any] = {}
        self.shard: Shard | None = None  # holds part of the streams at the largest N

    async def _run_all(self) -> None:
        o = self.o
        unknown = sorted(set(o.peer_servers) - set(SERVERS))
        if unknown:
            raise ValueError(f"unknown --peer-servers {unknown}: choose from {SERVERS}")
        section: dict[str, Any] = {
            "peer": "node",
            "node_version": node.version(),
            "pg_version": node.install(),
            "rounds": o.peer_rounds,
            "page_modes": o.page_modes,
            "writes_to": "the stream instance",
            "sizes": {},
        }
        self.results["peer"] = section
        limits = raise_limits(max(o.sizes))
        section["limits"] = limits
        self.results["machine"]["open_file_limit"] = limits["open_file_limit"]
        self.say(f"limits: {limits}")
        section["send_cost"] = await self.send_cost("start")
        try:
            for n in o.sizes:
                # Turns alternate at every N; above the page sizes one turn each (they are long),
                # and the GC before (ripple-gc-default) only where the pages fetch.
                rounds = max(1, o.peer_rounds) if n <= o.page_max else 1
                keys = [k for k in o.peer_servers if n <= o.page_max or k != "ripple-gc-default"]
                for turn in range(rounds):
                    self.profiling = o.profile and turn == rounds - 1
                    for c in [PeerContender(key, key.split("-")[0], key, "ripple") for key in keys]:
                        label = f"turn {turn + 1}" + (", profiled" if self.profiling else "")
                        self.say(f"--- {c.key}: {n} streams ({label})")
                        load_start = os.getloadavg()
                        self.block = {}
                        entry = await self.size(c, n, modes=o.page_modes, hammer=False)
                        entry["load_avg_start"] = [round(x, 2) for x in load_start]
                        entry["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
                        entry["profiled"] = self.profiling
                        entry["server_version"] = section["node_version"] if c.app == "node" else ""
                        where = section["sizes"].setdefault(str(n), {}).setdefault(c.key, [])
                        where.append(entry)
                        self.save_partial()
        finally:
            restore_ports(limits)
        section["send_cost"] += await self.send_cost("end")

    def save_partial(self) -> None:
        """The results so far, rewritten after every block: a run cut short keeps them."""
        (self.log_dir / "peer-partial.json").write_text(json.dumps(self.results, indent=1))

    async def send_cost(self, when: str) -> list[dict[str, Any]]:
        """The floor: one send() to each of N loopback sockets (bench/sendcost.py)."""
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        sizes = [s for s in (1000, 2000, 5000, 9000) if 2 * s + 1024 < nofile]
        found: list[dict[str, Any]] = [
            {"when": when, **await asyncio.to_thread(sendcost.measure, s)} for s in sizes
        ]
        self.say(f"send cost: {found}")
        return found

    async def latency_phase(
        self,
        c: Contender,
        server: procs.Target,
        recorder: Recorder,
        live: list[bool],
        mode: str | None,
        rate: float,
    ) -> dict[str, Any]:
        if c.writer is not server:  # writes go to the instance that serves the streams
            assert isinstance(server, procs.Server)
            c.writer = server
            c.writer_visitors = await load.get_visitors(server.port, 8)
            await self.warm_writer(c)
        page = mode == "page"
        recorder.catchup_clients = [i for i, ok in enumerate(live) if ok] if page else []
        recorder.catchup_window = self.o.duration if page else 0.0
        load_start = os.getloadavg()
        if self.shard is not None:
            await self.shard.begin(await self.newest_id())
        probe = (
            start_profile(c, server, mode, self.o.duration, self.log_dir)
            if self.profiling
            else None
        )
        out = await super().latency_phase(c, server, recorder, live, mode, rate)
        out["load_avg"] = [round(x, 2) for x in load_start]
        if self.shard is not None:
            await merge_shard(self, self.shard, out, recorder, live)
        if mode:
            out["served_ms"] = {
                kind: stats.summary_ms(np.frombuffer(times, dtype=np.float64))
                for kind, times in recorder.served.items()
            }
            out["ids_via_catchup"] = recorder.via_catchup
        if probe is not None:
            out["profile"] = probe()
            self.say(f"{c.key} {mode or 'event'} profile: {out['profile']}")
        recorder.catchup_window = 0.0
        return out

    async def size(
        self, c: Contender, n: int, modes: list[str] | None = None, hammer: bool = True
    ) -> dict[str, Any]:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        per_process = int(os.environ.get("RIPPLE_BENCH_STREAMS_PER_PROCESS", nofile - 4096))
        if n <= per_process:
            return await super().size(c, n, modes, hammer)
        return await size_sharded(self, c, n)
