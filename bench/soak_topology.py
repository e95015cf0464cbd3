"""The soak's world: its own PostgreSQL cluster, a PgBouncer, link proxies and two instances.

Nothing here touches the machine's shared PostgreSQL: the cluster is a throwaway one
(`support.cluster.PgCluster`), so restarting it or terminating its backends hurts nobody.

```
 instance a ──pooled link a──► PgBouncer (transaction) ──► cluster
            └─direct link a──────────────────────────────►    "
 instance b ──pooled link b──►    "
            └─direct link b──────────────────────────────►    "
 some streams + one page ──client link──► instance b
```

Each link is a `support.tcpproxy.HoldingProxy` (run in a process of its own, see
bench/linkproxy.py): `cut()` holds every byte with connections left open (a partition),
`heal()` lets them through, `reset_all()` drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
from support import database
from support.cluster import PgCluster
from support.pgbouncer import PgBouncer
from support.server import AppServer

from bench.linkproxy import Link, LinkProcess

DBNAME = "ripple_soak"
# The listener's health query interval: a cut link is noticed within about this.
LISTENER_CHECK_SECONDS = "2"


@dataclass
class Topology:
    log_dir: Path
    workers: int = 2
    cluster: PgCluster | None = None
    bouncer: PgBouncer | None = None
    instances: list[AppServer] = field(default_factory=list)
    db_links: list[tuple[Link, Link]] = field(default_factory=list)  # per instance
    client_link: Link | None = None  # in front of instance b
    _link_processes: list[LinkProcess] = field(default_factory=list)

    # -- urls --------------------------------------------------------------------------

    @property
    def direct_url(self) -> str:
        """The database, directly: for the checker and for faults, never through a link."""
        assert self.cluster is not None
        return self.cluster.url_for(DBNAME)

    @property
    def links_available(self) -> bool:
        return self.client_link is not None

    def client_ports(self) -> list[int]:
        """Where clients connect: instance a, instance b, and b through the client link."""
        ports = [s.port for s in self.instances]
        if self.client_link is not None:
            ports.append(self.client_link.port)
        return ports

    # -- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.cluster = PgCluster()
        await self.cluster.astart()
        conn = await asyncpg.connect(self.cluster.url, timeout=10)
        try:
            await conn.execute(f'CREATE DATABASE "{DBNAME}"')
        finally:
            await conn.close()
        await asyncio.to_thread(database.migrate, self.direct_url)
        # server_login_retry: after a cluster restart, try the server again within a second
        # instead of PgBouncer's default 15 s.
        self.bouncer = PgBouncer(
            "127.0.0.1",
            self.cluster.port,
            default_pool_size=12,
            settings={"server_login_retry": "1"},
        )
        await self.bouncer.astart()
        links = self._links([self.bouncer.port, self.cluster.port] * 2, "db-links")
        for index, name in enumerate(("a", "b")):
            pooled, direct = links[2 * index], links[2 * index + 1]
            self.db_links.append((pooled, direct))
            pooled_port, direct_port = pooled.port, direct.port
            server = AppServer(
                f"postgresql://postgres@127.0.0.1:{pooled_port}/{DBNAME}",
                {
                    "DATABASE_URL_UNPOOLED": f"postgresql://postgres@127.0.0.1:{direct_port}/{DBNAME}",
                    "MAX_STREAMS_PER_CLIENT": "0",
                    "RIPPLE_LISTENER_CHECK_SECONDS": LISTENER_CHECK_SECONDS,
                },
                workers=self.workers,
                log_dir=self.log_dir / f"instance-{name}",
                startup_timeout=90,
            )
            self.instances.append(server)
        await asyncio.gather(*(s.astart() for s in self.instances))
        self.client_link = self._links([self.instances[1].port], "client-link")[0]

    def _links(self, target_ports: list[int], name: str) -> list[Link]:
        process = LinkProcess(target_ports, self.log_dir / f"{name}.log")
        self._link_processes.append(process)
        return process.links

    def stop(self) -> None:
        """Stop everything this topology started, each by its pid; never raises."""
        for server in self.instances:
            with contextlib.suppress(Exception):
                server.stop(timeout=5)
        for process in self._link_processes:
            with contextlib.suppress(Exception):
                process.stop()
        if self.bouncer is not None:
            with contextlib.suppress(Exception):
                self._copy_log(self.bouncer.log_path, "pgbouncer.log")
                self.bouncer.destroy()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self._copy_log(self.cluster.log_path, "postgres.log")
                self.cluster.destroy()

    def _copy_log(self, path: Path, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.log_dir / name).write_bytes(path.read_bytes())

    # -- health ------------------------------------------------------------------------

    async def wait_healthy(self, timeout: float) -> float | None:
        """Seconds until every instance answers /healthz ok (each worker listening), or None."""
        start = time.monotonic()
        deadline = start + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            pending = list(self.instances)
            while pending and time.monotonic() < deadline:
                still = []
                for server in pending:
                    try:
                        answer = await client.get(f"{server.base_url}/healthz")
                        ok = answer.status_code == 200 and answer.json().get("status") == "ok"
                    except (httpx.HTTPError, ValueError):
                        ok = False
                    if not ok:
                        still.append(server)
                pending = still
                if pending:
                    await asyncio.sleep(0.25)
        return None if pending else time.monotonic() - start
