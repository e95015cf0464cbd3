"""The faults the soak causes, each for real, and the schedule that draws them.

A fault's cause is undone (a cluster started again, a link healed) before the next one is
drawn; its end is when every instance answers /healthz ok again (or the bound passed), which
is watched in the background, so that a slow recovery on a busy machine does not thin out the
schedule. Its span, start to end, is what the timeline shades.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from support.server import AppServer, ServerStartError

from bench.net import now
from bench.soak_topology import Topology

CUT_SECONDS = 10.0
RECOVERY_TIMEOUT = 90.0

LISTENER_BACKENDS = """
SELECT pg_terminate_backend(pid) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND (query ILIKE 'LISTEN%' OR application_name = 'ripple-listener')
"""

KINDS = (
    "listener_kill",
    "worker_sigkill",
    "instance_restart",
    "postgres_restart",
    "pgbouncer_restart",
    "db_link_cut",
    "client_link_cut",
)
LINK_KINDS = ("db_link_cut", "client_link_cut")


@dataclass
class FaultRecord:
    kind: str
    start: float  # `now()` clock
    undone: float = 0.0  # the cause undone
    end: float = 0.0  # every instance healthy again
    detail: dict[str, Any] = field(default_factory=dict)
    recovered_after: float | None = None  # seconds from the cause undone to all healthy
    error: str | None = None


class Chaos:
    def __init__(self, topology: Topology, rng: random.Random, only: tuple[str, ...] = ()) -> None:
        self.topology = topology
        self.rng = rng
        self.records: list[FaultRecord] = []
        unknown = set(only) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        self.kinds = [k for k in (only or KINDS) if topology.links_available or k not in LINK_KINDS]
        self._deck: list[str] = []
        self._recoveries: list[asyncio.Task[None]] = []

    def draw(self) -> str:
        """Kinds come from a shuffled deck, so every kind appears before any repeats."""
        if not self._deck:
            self._deck = list(self.kinds)
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    async def run(self, seconds: float, first_after: float, gap: tuple[float, float]) -> None:
        """A fault every `gap` seconds (uniform) from `first_after`, none starting after
        `seconds`."""
        t0 = now()
        due = first_after
        while due < seconds:
            await asyncio.sleep(max(0.0, t0 + due - now()))
            await self.cause(self.draw())
            due = max(now() - t0, due + self.rng.uniform(*gap))
        await asyncio.gather(*self._recoveries)

    async def cause(self, kind: str) -> FaultRecord:
        record = FaultRecord(kind, now())
        self.records.append(record)
        action: Callable[[FaultRecord], Awaitable[None]] = getattr(self, f"_{kind}")
        try:
            await action(record)
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        record.undone = now()
        self._recoveries.append(asyncio.create_task(self._recovered(record)))
        return record

    async def _recovered(self, record: FaultRecord) -> None:
        took = await self.topology.wait_healthy(RECOVERY_TIMEOUT)
        record.end = now()
        if took is None:
            record.error = (record.error or "") + " not healthy again within bound"
        else:
            record.recovered_after = round(record.end - record.undone, 3)

    # -- the faults --------------------------------------------------------------------

    async def _listener_kill(self, record: FaultRecord) -> None:
        conn = await asyncpg.connect(self.topology.direct_url, timeout=10)
        try:
            rows = await conn.fetch(LISTENER_BACKENDS)
        finally:
            await conn.close()
        record.detail["terminated"] = len(rows)

    async def _worker_sigkill(self, record: FaultRecord) -> None:
        index = self.rng.randrange(len(self.topology.instances))
        server = self.topology.instances[index]
        pids = server.worker_pids()
        pid = self.rng.choice(pids)
        record.detail.update(instance="ab"[index], pid=pid)
        os.kill(pid, signal.SIGKILL)
        # The server notices and starts a new worker; wait for the count to be back.
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            current = server.worker_pids()
            if len(current) >= self.topology.workers and pid not in current:
                return

    async def _instance_restart(self, record: FaultRecord) -> None:
        index = self.rng.randrange(len(self.topology.instances))
        server = self.topology.instances[index]
        record.detail["instance"] = "ab"[index]
        record.detail["exit_code"] = await server.astop(timeout=10)
        await start_again(server, record)

    async def _postgres_restart(self, record: FaultRecord) -> None:
        cluster = self.topology.cluster
        assert cluster is not None
        await cluster.astop("fast")
        await asyncio.sleep(1.0)
        await cluster.astart()

    async def _pgbouncer_restart(self, record: FaultRecord) -> None:
        bouncer = self.topology.bouncer
        assert bouncer is not None
        await asyncio.to_thread(bouncer.stop)
        await asyncio.sleep(0.5)
        await bouncer.astart()

    async def _db_link_cut(self, record: FaultRecord) -> None:
        index = self.rng.randrange(len(self.topology.db_links))
        record.detail["instance"] = "ab"[index]
        links = self.topology.db_links[index]
        for link in links:
            link.cut()
        await asyncio.sleep(CUT_SECONDS)
        for link in links:
            link.heal()

    async def _client_link_cut(self, record: FaultRecord) -> None:
        link = self.topology.client_link
        assert link is not None
        ending = self.rng.choice(["heal", "reset"])
        record.detail["ending"] = ending
        link.cut()
        await asyncio.sleep(CUT_SECONDS)
        if ending == "reset":
            link.reset_all()
        link.heal()


async def start_again(server: AppServer, record: FaultRecord, attempts: int = 3) -> None:
    """Start a stopped instance, trying again if it is not ready in time (on a busy machine
    it may not be): an instance left stopped would turn the rest of the soak into one fault."""
    for attempt in range(1, attempts + 1):
        try:
            await server.astart()
        except ServerStartError as exc:
            record.detail[f"start_attempt_{attempt}"] = str(exc).splitlines()[0]
            if attempt == attempts:
                raise
        else:
            return
