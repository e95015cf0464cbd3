"""The SQLAlchemy engine and sessions for ordinary queries (never for LISTEN)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
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
    engine = create_async_engine(
        settings.database.sqlalchemy_url,
        connect_args=connect_args(settings.database, pooled=settings.database_is_pooled),
        # Per worker; with one LISTEN connection that is at most 17 connections to count
        # against the server's max_connections (or the pooler's) per worker. Opened on
        # demand and then kept: no overflow, because an overflow connection is closed on
        # return whenever the pool is full, and under steady concurrency above the pool
        # size that meant a new connection (a TLS attempt, a login) for many requests.
        pool_size=16,
        max_overflow=0,
        pool_timeout=10,
        # No pre-ping: with asyncpg it costs two round trips on every checkout. A connection
        # broken by a database restart fails one request, and SQLAlchemy then invalidates
        # every pooled connection older than that error.
        pool_recycle=1800,
    )
    if settings.database.needs_writable_host:
        discard_read_only_connections(engine)
    return engine


def reports_read_only(connection: asyncpg.Connection) -> bool:
    """Does the server say it is a hot standby, or read-only by default (fenced)?

    Both are reported to the client whenever they change (PostgreSQL 14+), so asyncpg
    already holds the latest values: no query needed.
    """
    settings = connection.get_settings()
    return any(
        getattr(settings, name, "off") == "on"
        for name in ("in_hot_standby", "default_transaction_read_only")
    )


# SQLSTATE 25006 read_only_sql_transaction: a write reached a standby or a fenced old primary.
_READ_ONLY_TRANSACTION = "25006"


def discard_read_only_connections(engine: AsyncEngine) -> None:
    """After a failover, keep no pooled connection to a host that can no longer write.

    target_session_attrs picks a read-write host only when a connection is opened; a
    pooled one outlives that choice. A connection whose server reports itself read-only
    (GUC_REPORT values asyncpg keeps: no round trip) is replaced at checkout, and a write
    refused as read-only counts as a disconnect, which discards every older pooled
    connection too, so the next connection goes to whichever host is now the primary.
    """

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _refuse_read_only(_dbapi: object, record: Any, _proxy: object) -> None:
        if reports_read_only(record.driver_connection):
            raise DisconnectionError("the database host reports itself read-only")

    @event.listens_for(engine.sync_engine, "handle_error")
    def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
        if getattr(context.original_exception, "sqlstate", None) == _READ_ONLY_TRANSACTION:
            context.is_disconnect = True


def open_database(settings: Settings) -> Database:
    return Database(create_engine(settings), pooled=settings.database_is_pooled)


class Database:
    """Owns the engine; hands out short sessions: one transaction, or autocommit."""

    def __init__(self, engine: AsyncEngine, *, pooled: bool = False) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Behind a transaction pooler a statement outside a transaction may be parsed on one
        # server connection and executed on another: there, keep the explicit transaction.
        self._pooled = pooled
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed on success, rolled back on any error."""
        async with self._sessions.begin() as session:
            yield session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection where each statement is its own transaction (no BEGIN/COMMIT
        round trips, no ORM bookkeeping): for the hot reads, and for writes that are one
        statement (a NOTIFY in that statement is delivered only if the statement commits).
        """
        if self._pooled:
            async with self.engine.begin() as connection:
                yield connection
        else:
            async with self._autocommit.connect() as connection:
                yield connection

    async def dispose(self) -> None:
        await self.engine.dispose()
