"""With DATABASE_URL unset the launcher starts an embedded PostgreSQL, migrates it once
(before the workers), and serves."""

import asyncio
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.server import AppServer
from support.sse import SSEClient
from support.visitors import Visitor

pytestmark = pytest.mark.slow  # a long fault or load test (see pyproject.toml)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Run as root, the embedded server drops to an unprivileged user, which must be able to
    reach its directory (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ripple-embedded-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_starts_embedded_database_migrates_and_serves(
    app_server: Callable[..., AppServer], data_dir: Path
) -> None:
    server = await asyncio.to_thread(
        app_server,
        {"RIPPLE_DATA_DIR": str(data_dir / "data")},
        database_url="",
        workers=2,
        startup_timeout=90,
    )
    log = server.log_text()
    assert "embedded PostgreSQL" in log
    # Migrated once, by the launcher: one run of every revision (the first one counts runs).
    assert len(re.findall(r"Running upgrade\s+-> 0001\b", log)) == 1, log
    async with (
        await Visitor.arrive(server.base_url) as visitor,
        SSEClient.open(server.base_url, cookies=visitor.cookie_header()) as stream,
    ):
        value = (await visitor.increment()).json()["value"]
        assert value == 1
        await stream.wait_for(lambda ev: ev.event == "counter", timeout=5)
    assert (data_dir / "data" / "pg").is_dir()
