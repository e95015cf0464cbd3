"""Alembic builds the schema from empty, can go back to base and forward again, and the
models agree with the migrations."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from support import database
from support.paths import REPO_ROOT


@pytest.fixture
def empty_database(admin_url: str) -> Iterator[str]:
    url = asyncio.run(database.create_database(admin_url))
    try:
        yield url
    finally:
        asyncio.run(database.drop_database(url, admin_url))


def _alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_URL")}
    env["DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _tables(url: str) -> set[str]:
    rows = asyncio.run(
        database.fetch(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    )
    return {r["tablename"] for r in rows}


def test_upgrade_downgrade_upgrade_and_models_match(empty_database: str) -> None:
    url = empty_database
    assert _tables(url) == set()
    up = _alembic(url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    expected = {"activity", "counters", "presence", "rate_buckets", "visitors", "workers"}
    assert expected <= _tables(url)
    assert asyncio.run(database.fetchval(url, "SELECT value FROM counters WHERE id = 1")) == 0

    check = _alembic(url, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr

    down = _alembic(url, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert _tables(url) == {"alembic_version"}

    again = _alembic(url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    assert expected <= _tables(url)
