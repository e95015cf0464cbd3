"""The SQLAlchemy engine and sessions for ordinary queries (never for LISTEN)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.config import DatabaseUrl, Settings


def _unique_statement_name() -> str:
    return f"__ripple_{uuid.uuid4().hex}__"


def connect_args(url: DatabaseUrl, *, pooled: bool) -> dict[str, Any]:
    """asyncpg connect arguments; behind a transaction pooler, no statement cache.

    PgBouncer 1.18 in transaction mode hands each transaction to any server
    connection, so a prepared statement cached on one is unknown on the next.
    """
    args: dict[str, Any] = {"server_settings": {"application_name": "ripple"}}
    if url.ssl is not None:
        args["ssl"] = url.ssl
    if pooled:
        args["statement_cache_size"] = 0
        args["prepared_statement_cache_size"] = 0
        args["prepared_statement_name_func"] = _unique_statement_name
    return args


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.database.sqlalchemy_url,
        connect_args=connect_args(settings.database, pooled=settings.database_is_pooled),
        pool_size=10,
        max_overflow=10,
        pool_timeout=10,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


class Database:
    """Owns the engine; hands out short sessions, each in one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed on success, rolled back on any error."""
        async with self._sessions.begin() as session:
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
