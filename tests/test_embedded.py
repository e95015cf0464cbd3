"""With DATABASE_URL unset the launcher starts an embedded PostgreSQL, migrates it once
(before the workers), and serves."""

import asyncio
from collections.abc import Callable
from pathlib import Path

from support.server import AppServer
from support.sse import SSEClient
from support.visitors import Visitor


async def test_starts_embedded_database_migrates_and_serves(
    app_server: Callable[..., AppServer], tmp_path: Path
) -> None:
    server = await asyncio.to_thread(
        app_server,
        {"RIPPLE_DATA_DIR": str(tmp_path / "data")},
        database_url="",
        workers=2,
        startup_timeout=90,
    )
    log = server.log_text()
    assert "embedded PostgreSQL" in log
    assert log.count("Running upgrade") == 1  # migrated once, by the launcher
    async with (
        await Visitor.arrive(server.base_url) as visitor,
        SSEClient.open(server.base_url, cookies=visitor.cookie_header()) as stream,
    ):
        value = (await visitor.increment()).json()["value"]
        assert value == 1
        await stream.wait_for(lambda ev: ev.event == "counter", timeout=5)
    assert (tmp_path / "data" / "pg").is_dir()
