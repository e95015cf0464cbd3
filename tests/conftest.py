"""Shared fixtures: a migrated database, app servers, PostgreSQL clusters and PgBouncers.

Every fixture that starts a process stops it in a ``finally`` block, so a failing test leaves
nothing running. Test support code lives in ``tests/support`` (imported as ``support``: pytest
puts this directory on ``sys.path`` because ``tests`` is not a package).
"""

import asyncio
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support import database
from support.cluster import PgCluster
from support.pgbouncer import PgBouncer
from support.server import AppServer


@pytest.fixture(scope="session")
def admin_url() -> str:
    """A server URL allowed to create databases; an unreachable server fails the run."""
    url = database.admin_url()
    asyncio.run(database.check_reachable(url))
    return url


@pytest.fixture(scope="session")
def database_url(admin_url: str) -> Iterator[str]:
    """A fresh database migrated to head by Alembic, shared by the session, dropped after."""
    url = asyncio.run(database.create_database(admin_url))
    try:
        database.migrate(url)
        yield url
    finally:
        asyncio.run(database.drop_database(url, admin_url))


AppServerFactory = Callable[..., AppServer]


@pytest.fixture
def app_server(database_url: str, tmp_path: Path) -> Iterator[AppServerFactory]:
    """Start app instances: ``app_server(env={...}, workers=2, database_url=..., port=...)``.

    Blocks until ``/healthz`` is ok (from an async test while streams are open, prefer
    ``await asyncio.to_thread(app_server, ...)``). Every instance is stopped at teardown.
    """
    servers: list[AppServer] = []

    def start(
        env: Mapping[str, str] | None = None,
        *,
        database_url: str = database_url,
        workers: int = 2,
        port: int | None = None,
        startup_timeout: float = 30.0,
    ) -> AppServer:
        server = AppServer(
            database_url,
            env,
            port=port,
            workers=workers,
            log_dir=tmp_path / f"server-{len(servers)}",
            startup_timeout=startup_timeout,
        )
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        _stop_all([server.stop for server in reversed(servers)])


@pytest.fixture
def pg_cluster() -> Iterator[Callable[[], PgCluster]]:
    """Start throwaway PostgreSQL clusters: ``cluster = pg_cluster()``; destroyed at teardown."""
    clusters: list[PgCluster] = []

    def start() -> PgCluster:
        cluster = PgCluster()
        clusters.append(cluster)
        return cluster.start()

    try:
        yield start
    finally:
        _stop_all([cluster.destroy for cluster in reversed(clusters)])


@pytest.fixture
def pgbouncer(admin_url: str) -> Iterator[Callable[..., PgBouncer]]:
    """Start PgBouncers: ``pgbouncer()`` in front of the test server, or
    ``pgbouncer(host, port, pool_mode=..., default_pool_size=...)``; stopped at teardown."""
    bouncers: list[PgBouncer] = []
    admin = urlsplit(admin_url)

    def start(
        host: str = admin.hostname or "127.0.0.1",
        port: int = admin.port or 5432,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 20,
        settings: Mapping[str, str] | None = None,
    ) -> PgBouncer:
        bouncer = PgBouncer(
            host, port, pool_mode=pool_mode, default_pool_size=default_pool_size, settings=settings
        )
        bouncers.append(bouncer)
        return bouncer.start()

    try:
        yield start
    finally:
        _stop_all([bouncer.destroy for bouncer in reversed(bouncers)])


def _stop_all(stops: list[Callable[[], object]]) -> None:
    """Call every stop function even if some fail; raise the first failure afterwards."""
    errors: list[BaseException] = []
    for stop in stops:
        try:
            stop()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
