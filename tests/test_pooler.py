"""Behind a real PgBouncer in transaction mode: everything works with DATABASE_URL pooled
and the LISTEN on the direct URL; a pooled LISTEN URL is refused at start-up."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from support import database
from support.paths import REPO_ROOT
from support.pgbouncer import PgBouncer
from support.server import AppServer, ServerStartError
from support.sse import SSEClient
from support.visitors import Visitor

AppServerFactory = Callable[..., AppServer]


async def test_app_works_through_a_transaction_pooler(
    app_server: AppServerFactory, database_url: str, pgbouncer: Callable[..., PgBouncer]
) -> None:
    bouncer = await asyncio.to_thread(pgbouncer, default_pool_size=3)
    pooled = bouncer.url_for(database.database_name(database_url))
    server = await asyncio.to_thread(
        app_server, {"DATABASE_URL_UNPOOLED": database_url}, database_url=pooled, workers=2
    )
    async with (
        await Visitor.arrive(server.base_url) as visitor,
        SSEClient.open(server.base_url, cookies=visitor.cookie_header()) as stream,
    ):
        # Many concurrent transactions share 3 server connections: statements must not
        # rely on prepared statements surviving between transactions.
        results = await asyncio.gather(
            *(visitor.post(f"pooled {n}") for n in range(40)),
            *(visitor.increment() for _ in range(40)),
        )
        assert {r.status_code for r in results} == {200, 201}
        ids = sorted(r.json()["id"] for r in results if r.status_code == 201)
        got = await stream.collect(
            10,
            count=len(ids),
            predicate=lambda ev: ev.event == "activity" and int(ev.data) in ids,
        )
        assert sorted(int(ev.data) for ev in got) == ids
        renamed = await visitor.rename("Pooled Person")
        assert renamed.status_code == 200
        page = await visitor.get("/fragments/presence")
        assert "Pooled Person" in page.text


async def test_listen_url_through_a_transaction_pooler_is_refused_clearly(
    app_server: AppServerFactory, database_url: str, pgbouncer: Callable[..., PgBouncer]
) -> None:
    bouncer = await asyncio.to_thread(pgbouncer)
    pooled = bouncer.url_for(database.database_name(database_url))
    with pytest.raises(ServerStartError) as refused:
        await asyncio.to_thread(
            app_server,
            {"DATABASE_URL_UNPOOLED": pooled},
            database_url=pooled,
            workers=1,
            startup_timeout=20,
        )
    message = str(refused.value)
    assert "does not deliver notifications" in message
    assert "transaction pooler" in message


def test_migrations_use_the_direct_url(admin_url: str, pgbouncer: Callable[..., PgBouncer]) -> None:
    url = asyncio.run(database.create_database(admin_url))
    try:
        bouncer = pgbouncer()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_URL")}
        env["DATABASE_URL"] = bouncer.url_for(database.database_name(url))
        env["DATABASE_URL_UNPOOLED"] = url
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        version = asyncio.run(database.fetchval(url, "SELECT version_num FROM alembic_version"))
        assert version
    finally:
        asyncio.run(database.drop_database(url, admin_url))
