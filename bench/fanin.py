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
import contextlib
import os
import resource
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import load, net, node, procs, profile, stats
from bench.load import Recorder
from bench.net import now
from bench.run import Bench, Contender, Options
from bench.shard import Shard, latencies

# Each block's writer is its own stream instance, known once it has started (latency_phase).
UNSET = procs.Server("unset", 0, 0, [], {}, "/healthz")
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
WIDE_PORTS = (10240, 65535)  # above the usual fixed ports (5432, 8000, 8080)


SERVERS = ("ripple", "node", "ripple-gc-default")  # the last: Ripple with CPython's GC defaults


@dataclass
class PeerContender(Contender):
    def stream_server(self, url: str, max_streams: int) -> procs.Target:
        if self.key == "ripple-gc-default":  # app.gcpolicy switched off: the before
            server = procs.ripple(f"{self.key}-streams", url, 2, max_streams, "uvicorn")
            server.env["RIPPLE_GC_POLICY"] = "default"
            return server
        if self.app == "node":
            server = node.peer(f"{self.key}-streams", url, 2)
            directory = tempfile.mkdtemp(prefix="ripple-bench-node-prof-")
            server.env["NODE_PEER_PROFILE_DIR"] = directory  # for a profiled turn
            server.temp_dirs.append(directory)
            return server
        return procs.ripple(f"{self.key}-streams", url, 2, max_streams, "uvicorn")


def raise_limits(streams: int) -> dict[str, Any]:
    """As root, lift the hard open-file limit and widen the ephemeral port range when the
    largest block needs it: the load process holds a socket per stream and per page, and
    every one of them takes a loopback port. Says what it changed (the port range is the
    machine's, and is put back by `restore_ports`)."""
    done: dict[str, Any] = {"root": os.geteuid() == 0}
    need = 2 * streams + 4096
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need and done["root"]:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            done["hard_open_files_raised"] = f"{hard} -> {need}"
        except (ValueError, OSError) as exc:  # no CAP_SYS_RESOURCE: bench.shard instead
            done["hard_open_files_not_raised"] = f"{hard} (wanted {need}: {exc})"
    done["open_file_limit"] = procs.raise_open_file_limit()
    with contextlib.suppress(OSError, ValueError):
        low, high = (int(x) for x in PORT_RANGE.read_text().split())
        done["port_range_before"] = f"{low} {high}"
        if high - low < streams + 16384 and done["root"]:
            PORT_RANGE.write_text(f"{WIDE_PORTS[0]} {WIDE_PORTS[1]}\n")
            done["port_range"] = f"{WIDE_PORTS[0]} {WIDE_PORTS[1]}"
    return done


def restore_ports(limits: dict[str, Any]) -> None:
    if "port_range" in limits:
        with contextlib.suppress(OSError):
            PORT_RANGE.write_text(limits["port_range_before"] + "\n")


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
                    for c in [
                        PeerContender(key, key.split("-")[0], key, "ripple", writer=UNSET)
                        for key in keys
                    ]:
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
        import json

        if not hasattr(self, "partial_path"):
            self.partial_path = self.log_dir / "peer-partial.json"
        self.partial_path.write_text(json.dumps(self.results, indent=1))

    async def send_cost(self, when: str) -> list[dict[str, Any]]:
        """The floor: one send() to each of N loopback sockets (bench/sendcost.py)."""
        from bench import sendcost

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
        probe = self._start_profile(c, server, mode) if self.profiling else None
        out = await super().latency_phase(c, server, recorder, live, mode, rate)
        out["load_avg"] = [round(x, 2) for x in load_start]
        if self.shard is not None:
            await self._merge_shard(out, recorder, live)
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

    def _start_profile(self, c: Contender, server: procs.Target, mode: str | None) -> Any:
        """Start a profiler over the phase's write period; returns what collects it."""
        assert isinstance(server, procs.Server)
        assert server.popen is not None
        seconds = self.o.duration
        name = f"{c.key}-{mode or 'event'}-{server.port}"
        if c.app == "ripple":
            spy = profile.PySpy(server.popen.pid, seconds, self.log_dir / f"{name}.pyspy.txt")
            return spy.collect
        # Node: the peer starts V8's sampler on SIGUSR2 and writes the profile on the next.
        directory = Path(server.env["NODE_PEER_PROFILE_DIR"])
        for old in directory.glob("*.cpuprofile"):
            old.unlink()
        server.popen.send_signal(signal.SIGUSR2)

        def collect() -> dict[str, Any]:
            import time

            assert server.popen is not None
            server.popen.send_signal(signal.SIGUSR2)
            time.sleep(1.5)
            return profile.v8_profiles(directory)

        return collect

    async def _merge_shard(self, out: dict[str, Any], recorder: Recorder, live: list[bool]) -> None:
        """The event figures over both processes' streams (this one's stay under "here")."""
        assert self.shard is not None
        sent_at = self.last_sent_at
        path = str(self.log_dir / f"shard-{len(sent_at)}-{int(now() * 1000)}.npy")
        theirs = await self.shard.report(sent_at, path, max(15.0, self.o.duration))
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
        self.say(f"both processes: delivery {out['event']['ratio']} {out['event']['latency_ms']}")

    async def size(
        self, c: Contender, n: int, modes: list[str] | None = None, hammer: bool = True
    ) -> dict[str, Any]:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        per_process = int(os.environ.get("RIPPLE_BENCH_STREAMS_PER_PROCESS", nofile - 4096))
        if n <= per_process:
            return await super().size(c, n, modes, hammer)
        return await self._size_sharded(c, n)

    async def _size_sharded(self, c: Contender, n: int) -> dict[str, Any]:
        """More streams than this process may open: half here, half in a shard process;
        the open and event phases only (as `Bench.size` does them)."""
        o = self.o
        server = c.stream_server(self.url, n)
        streams: list[net.SseStream] = []
        shard: Shard | None = None
        entry: dict[str, Any] = {}
        try:
            server.start(self.log_dir)
            background = await self.wait_quiet()
            await server.wait_ready()
            visitors = await load.get_visitors(server.port, min(o.visitors, n))
            await asyncio.sleep(1.0)
            cpu0, rss0 = server.sample()
            cursor = await self.newest_id()
            cookies = [visitors[i % len(visitors)].cookie for i in range(n)]
            requests = net.stream_requests(server.port, cookies, cursor)
            mine = n // 2
            shard = Shard.start(
                server.port, requests[mine:], self.log_dir / f"shard-{server.port}.log"
            )
            recorder = Recorder(mine, server.port, cookies[:mine], [], 1)
            t0 = now()
            (streams, failed), theirs = await asyncio.gather(
                net.open_streams(
                    server.port, requests[:mine], recorder, timeout=max(120.0, n / 40)
                ),
                shard.opened(timeout=max(180.0, n / 40 + 60)),
            )
            ramp = now() - t0
            await asyncio.sleep(3.0)
            cpu1, rss1 = server.sample()
            await asyncio.sleep(2.0)
            self.idle_cpu_rate = (server.sample()[0] - cpu1) / 2.0
            live = [s.status == 200 and not s.closed for s in streams]
            total = sum(live) + theirs["open"]
            entry["open"] = {
                "requested": n,
                "open": total,
                "failed": failed + theirs["failed"],
                "open_here": sum(live),
                "open_in_shard": theirs["open"],
                "ramp_s": round(ramp, 2),
                "rss_before_mib": round(rss0 / 2**20, 1),
                "rss_with_mib": round(rss1 / 2**20, 1),
                "kib_per_stream": round((rss1 - rss0) / 1024 / max(1, total), 2),
                "opens_per_s": round(total / max(ramp, 1e-9), 1),
                "open_cpu_ms_per_stream": round(1000 * (cpu1 - cpu0) / max(1, total), 2),
                "background_busy_pct": background,
                "idle_cpu_pct": round(100 * self.idle_cpu_rate, 1),
            }
            self.say(
                f"{c.key}: opened {total}/{n} (shard {theirs}) in {ramp:.1f} s; {entry['open']}"
            )
            self.shard = shard
            entry["event"] = await self.latency_phase(c, server, recorder, live, None, o.rate)
            entry["still_open"] = sum(
                1 for s, ok in zip(streams, live, strict=True) if ok and not s.closed
            ) + entry["event"]["event"].get("shard", {}).get("still_open", 0)
        finally:
            self.shard = None
            for stream in streams:
                stream.close()
            if shard is not None:
                shard.stop()
            await asyncio.sleep(0.5)
            server.stop()
        return entry
