"""Multi-host DATABASE_URLs: each spelling translated for SQLAlchemy and for asyncpg.

SQLAlchemy's half is checked with SQLAlchemy's own parser (what the engine will pass to
asyncpg.connect); asyncpg's half is connected for real in tests/test_failover.py.
"""

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import ConfigError, DatabaseUrl


def sqlalchemy_connect_args(url: DatabaseUrl) -> dict[str, Any]:
    """What the engine made from this URL would pass to asyncpg.connect."""
    engine = create_async_engine(url.sqlalchemy_url)
    try:
        _, kwargs = engine.dialect.create_connect_args(engine.sync_engine.url)
    finally:
        engine.sync_engine.dispose()
    return dict(kwargs)


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write",
        "postgresql://u:p@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
        "postgresql://u:p@/db?host=h1,h2&port=5432,5433&target_session_attrs=read-write",
        "postgres://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write",
        "postgresql+asyncpg://u:p@/db?host=h1:5432&host=h2:5433&target_session_attrs=read-write",
    ],
)
def test_both_multi_host_spellings_give_each_library_its_form(raw: str) -> None:
    url = DatabaseUrl.parse(raw)
    assert url.asyncpg_dsn == "postgresql://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write"
    assert url.sqlalchemy_url == (
        "postgresql+asyncpg://u:p@/db?host=h1,h2&port=5432,5433&target_session_attrs=read-write"
    )
    assert sqlalchemy_connect_args(url) == {
        "user": "u",
        "password": "p",
        "database": "db",
        "host": ["h1", "h2"],
        "port": [5432, 5433],
        "target_session_attrs": "read-write",
    }
    assert url.needs_writable_host
    assert url.database == "db"


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u@h1,h2/db?target_session_attrs=read-write",
        "postgresql://u@/db?host=h1&host=h2&target_session_attrs=read-write",
        "postgresql://u@/db?host=h1,h2&target_session_attrs=read-write",
    ],
)
def test_hosts_without_ports_get_the_default_port(raw: str) -> None:
    """SQLAlchemy refuses a multi-host URL where any host lacks a port."""
    url = DatabaseUrl.parse(raw)
    assert url.asyncpg_dsn == "postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write"
    args = sqlalchemy_connect_args(url)
    assert (args["host"], args["port"]) == (["h1", "h2"], [5432, 5432])


def test_one_port_for_every_host_and_mixed_ports() -> None:
    one = DatabaseUrl.parse("postgresql://u@/db?host=h1,h2&port=6000")
    assert one.asyncpg_dsn.startswith("postgresql://u@h1:6000,h2:6000/db?")
    mixed = DatabaseUrl.parse("postgresql://u@h1,h2:5433/db")
    assert mixed.asyncpg_dsn.startswith("postgresql://u@h1:5432,h2:5433/db?")


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://u@h1:5432,h2:5433/db?sslmode=require&target_session_attrs=read-write",
        "postgresql://u@/db?host=h1:5432&host=h2:5433&sslmode=require&target_session_attrs=read-write",
    ],
)
def test_sslmode_is_taken_out_for_asyncpg_with_several_hosts(raw: str) -> None:
    url = DatabaseUrl.parse(raw)
    assert url.ssl == "require"
    assert "sslmode" not in url.asyncpg_dsn
    assert "sslmode" not in url.sqlalchemy_url
    assert url.asyncpg_dsn == "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write"
    assert sqlalchemy_connect_args(url)["host"] == ["h1", "h2"]


def test_several_hosts_default_to_read_write() -> None:
    """libpq's default, any, could put the pool or the listener on a standby."""
    url = DatabaseUrl.parse("postgresql://u@h1:5432,h2:5433/db")
    assert url.target_session_attrs == "read-write"
    assert url.asyncpg_dsn.endswith("?target_session_attrs=read-write")
    assert sqlalchemy_connect_args(url)["target_session_attrs"] == "read-write"
    explicit = DatabaseUrl.parse("postgresql://u@h1:5432,h2:5433/db?target_session_attrs=any")
    assert explicit.target_session_attrs == "any"
    assert not explicit.needs_writable_host
    assert DatabaseUrl.parse(
        "postgresql://u@h1/db?target_session_attrs=primary"
    ).needs_writable_host


def test_ipv6_hosts_are_bracketed_for_asyncpg_and_bare_for_sqlalchemy() -> None:
    url = DatabaseUrl.parse("postgresql://u@[::1]:5432,[fe80::2]/db")
    assert url.asyncpg_dsn == (
        "postgresql://u@[::1]:5432,[fe80::2]:5432/db?target_session_attrs=read-write"
    )
    assert sqlalchemy_connect_args(url)["host"] == ["::1", "fe80::2"]


def test_a_single_host_url_is_used_as_written() -> None:
    url = DatabaseUrl.parse("postgresql://u@h:5433/db?sslmode=disable")
    assert url.asyncpg_dsn == "postgresql://u@h:5433/db"
    assert url.sqlalchemy_url == "postgresql+asyncpg://u@h:5433/db"
    assert url.target_session_attrs is None
    assert not url.needs_writable_host


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("postgresql://u@h1,h2/db?target_session_attrs=standby", "standby"),
        ("postgresql://u@h1,h2/db?target_session_attrs=prefer-standby", "standby"),
        ("postgresql://u@h1/db?target_session_attrs=read-only", "standby"),
        ("postgresql://u@h1,h2/db?target_session_attrs=sometimes", "not one of"),
        ("postgresql://u@h1:5432/db?host=h2:5433", "not both"),
        ("postgresql://u@h1,h2,h3/db?port=1,2", "3 database hosts but 2 ports"),
        ("postgresql://u@/db?host=h1:5432,h2&port=5433", "either as host:port or"),
        ("postgresql://u@h1,h2:99999/db", "out of range"),
        ("postgresql://u@h1,h2:x/db", "is not host, host:port"),
        ("postgresql://u@/db?host=/run/postgresql,h2", "network addresses"),
        ("postgresql://u@h1,,h2/db", "is not host, host:port"),
    ],
)
def test_bad_multi_host_urls_are_refused_clearly(raw: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        DatabaseUrl.parse(raw)
