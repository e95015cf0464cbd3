"""The launcher: one command that prepares the instance, then runs the ASGI server.

It runs once per instance, before the workers: starts the embedded PostgreSQL when
DATABASE_URL is unset (and migrates it), gives the workers a shared instance id and
metrics directory, raises the open-file limit, and starts uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn

# Nothing here may import app.metrics: the launcher must not own metric files of its own
# (they would count in the instance's totals), and with one worker the server imports the
# app in this very process, after PROMETHEUS_MULTIPROC_DIR is set.
from app.config import NOTIFY_CHANNEL as CHANNEL
from app.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
GRACEFUL_SHUTDOWN_SECONDS = 5
HTTP_PROTOCOL = "app.httpprotocol:EdgeLimitedHttpToolsProtocol"  # head size cap and deadline

log = logging.getLogger("ripple.serve")


def raise_open_file_limit() -> int:
    """Each open stream is a socket: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env, check=True
    )


# Connect failures that mean "not now"; TargetServerAttributeNotMatched: several hosts
# answered but none is read-write yet (mid-failover).
_UNREACHABLE = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.TargetServerAttributeNotMatched,
    TimeoutError,
)


async def _listen_round_trip(settings: Settings, timeout: float = 5.0) -> bool | None:
    """Does a NOTIFY sent through DATABASE_URL reach a LISTEN on DATABASE_URL_UNPOOLED?

    None if the database cannot be reached now (the workers keep retrying by themselves).
    With several hosts, both connections go to the one target_session_attrs picks.
    """
    listen, pooled = settings.listen_database, settings.database
    try:
        listener = await asyncpg.connect(listen.asyncpg_dsn, ssl=listen.ssl, timeout=timeout)
    except _UNREACHABLE:
        return None
    try:
        arrived = asyncio.Event()
        token = f"probe:{uuid.uuid4().hex}"

        def on_notification(_conn: object, _pid: int, _channel: str, payload: object) -> None:
            if payload == token:
                arrived.set()

        await listener.add_listener(CHANNEL, on_notification)
        try:
            sender = await asyncpg.connect(
                pooled.asyncpg_dsn, ssl=pooled.ssl, timeout=timeout, statement_cache_size=0
            )
        except _UNREACHABLE:
            return None
        try:
            await sender.execute("SELECT pg_notify($1, $2)", CHANNEL, token)
        finally:
            await sender.close()
        try:
            await asyncio.wait_for(arrived.wait(), timeout)
        except TimeoutError:
            return False
        return True
    finally:
        await listener.close()


def prepare_environment() -> tuple[dict[str, str], Any]:
    env = dict(os.environ)
    keepalive = None
    if not env.get("DATABASE_URL", "").strip():
        from app import devdb

        data_dir = Path(env.get("RIPPLE_DATA_DIR") or ROOT / ".data")
        url, keepalive = devdb.start(data_dir)
        env["DATABASE_URL"] = url
        env.pop("DATABASE_URL_UNPOOLED", None)
        migrate(env)
        log.warning(
            "embedded PostgreSQL migrated; serving on http://127.0.0.1:%s", env.get("PORT", "8000")
        )
    env.setdefault("RIPPLE_INSTANCE_ID", f"{os.uname().nodename[:30]}-{uuid.uuid4().hex[:8]}")
    metrics_dir = Path(tempfile.mkdtemp(prefix="ripple-metrics-"))
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env, keepalive


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    env, keepalive = prepare_environment()
    os.environ.update(env)
    try:
        settings = Settings.from_env(env)
    except ConfigError as error:
        log.error("configuration error: %s", error)
        sys.exit(2)
    if asyncio.run(_listen_round_trip(settings)) is False:
        log.error(
            "DATABASE_URL_UNPOOLED does not deliver notifications: a LISTEN there 'succeeds' "
            "but nothing arrives. Point it at a direct (session) connection to PostgreSQL, "
            "not a transaction pooler such as PgBouncer in transaction mode."
        )
        sys.exit(3)
    files = raise_open_file_limit()
    log.info(
        "starting %d workers on 0.0.0.0:%d (open-file limit %d)",
        settings.web_concurrency,
        settings.port,
        files,
    )
    try:
        uvicorn.run(
            "app.asgi:app",
            host="0.0.0.0",  # noqa: S104 - a PaaS routes to the container's port
            port=settings.port,
            workers=settings.web_concurrency,
            # By name: each worker imports it and reads its limits from the inherited env.
            http=HTTP_PROTOCOL,
            # The front door reads X-Forwarded-For itself (PROXY_HOPS; app.web.frontdoor).
            proxy_headers=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            log_level="info",
            access_log=False,
            server_header=False,
        )
    finally:
        shutil.rmtree(env["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
        del keepalive
