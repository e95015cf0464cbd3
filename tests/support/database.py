"""Throwaway databases on a PostgreSQL server: create, migrate with Alembic, query, drop."""

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .paths import REPO_ROOT

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_url() -> str:
    """A URL with the right to create databases: ``RIPPLE_TEST_ADMIN_URL`` or the local server."""
    return os.environ.get("RIPPLE_TEST_ADMIN_URL") or DEFAULT_ADMIN_URL


def asyncpg_dsn(url: str) -> str:
    """The URL as asyncpg wants it (it knows ``postgresql://`` and ``postgres://`` only)."""
    scheme, rest = url.split("://", 1)
    if scheme.startswith(("postgresql+", "postgres+")):
        scheme = "postgresql"
    return f"{scheme}://{rest}"


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    """A connection with a bounded connect timeout."""
    kwargs.setdefault("timeout", 10)
    return await asyncpg.connect(asyncpg_dsn(url), **kwargs)


async def fetch(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await connect(url)
    try:
        return await conn.fetch(query, *args, timeout=30)
    finally:
        await conn.close(timeout=5)


async def fetchval(url: str, query: str, *args: object) -> Any:
    conn = await connect(url)
    try:
        return await conn.fetchval(query, *args, timeout=30)
    finally:
        await conn.close(timeout=5)


async def execute(url: str, query: str, *args: object) -> str:
    conn = await connect(url)
    try:
        return await conn.execute(query, *args, timeout=30)
    finally:
        await conn.close(timeout=5)


async def settings(url: str, *names: str) -> dict[str, str]:
    """The server's current value of each named setting (``SHOW name``)."""
    conn = await connect(url)
    try:
        return {name: str(await conn.fetchval(f"SHOW {name}", timeout=30)) for name in names}
    finally:
        await conn.close(timeout=5)


async def check_reachable(url: str) -> None:
    """Raise a readable error when the server at ``url`` does not answer."""
    try:
        await fetchval(url, "SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {url} ({exc!r}); start it (scripts/test tries "
            "pg_ctlcluster) or point RIPPLE_TEST_ADMIN_URL at a server"
        ) from exc


# Names of the databases we create; `drop_database` drops no other (the benchmark's have their
# own prefix so that its leftovers are told apart from the suite's).
OWN_PREFIXES = ("ripple_test_", "ripple_bench_")


async def create_database(admin: str | None = None, prefix: str = "ripple_test_") -> str:
    """Create an empty database named ``<prefix><hex>``; return its URL (its name:
    ``database_name(url)``)."""
    if prefix not in OWN_PREFIXES:
        raise ValueError(f"{prefix!r} is not one of {OWN_PREFIXES}")
    admin = admin or admin_url()
    name = f"{prefix}{secrets.token_hex(6)}"
    await execute(admin, f'CREATE DATABASE "{name}"')
    return with_database(admin, name)


async def drop_database(url: str, admin: str | None = None) -> None:
    """Drop the database ``url`` names, disconnecting whoever is still using it."""
    admin = admin or admin_url()
    name = database_name(url)
    if not name.startswith(OWN_PREFIXES):
        raise ValueError(f"refusing to drop a database we did not create: {name!r}")
    await execute(
        admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        name,
    )
    # WITH (FORCE) also covers a backend that connected after the terminate above.
    await execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alembic_command() -> list[str]:
    # The console script beside our interpreter; ``python -m alembic`` run from the repository
    # root would see the project's alembic/ folder first on sys.path.
    script = Path(sys.executable).parent / "alembic"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "alembic"]


def migrate(url: str, revision: str = "head", timeout: float = 120.0) -> None:
    """``alembic upgrade <revision>`` against ``url``, run from the repository root."""
    env = {**os.environ, "DATABASE_URL": url}
    env.pop("DATABASE_URL_UNPOOLED", None)
    try:
        done = subprocess.run(
            [*_alembic_command(), "upgrade", revision],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"alembic upgrade took longer than {timeout} s") from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"alembic upgrade {revision} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
